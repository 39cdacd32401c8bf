"""``lpm export`` (a run's DiT weights as an inference checkpoint) and ``lpm generate`` (files -> an mp4)."""

from __future__ import annotations

import argparse
import os


def cmd_export(args: argparse.Namespace) -> int:
    from lpm.models.export import export_dit

    done = export_dit(args.run, args.out, ema=not args.no_ema, dtype=args.dtype, speech=args.speech,
                      idle_motion=args.idle_motion, idle_scale=args.idle_scale, cache=args.cache,
                      online_steps=args.online_steps, track_gain=args.track_gain,
                      restorer=args.restorer, base_steps=args.base_steps, track_range=args.track_range,
                      base_guidance=args.base_guidance, brow_exemplar=args.brow_exemplar)
    print(f"wrote {done.path}: {done.source} as {done.dtype}, {done.num_bytes / 2**20:.1f} MiB "
          f"(source {done.source_bytes / 2**20:.1f} MiB)")
    if done.idle is not None:
        print(f"idle head motion calibrated on {done.idle.clips} clips: offset std {done.idle.offset_std}, "
              f"sway std {done.idle.sway_std} (track units: degrees / 10)")
    if done.track_range is not None:
        bounds = ", ".join(f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in done.track_range.items())
        print(f"track range: {bounds or 'none (unbounded)'}")
    if done.blinks is not None:
        print(f"idle blinks calibrated on {done.blinks.blinks} blinks: one per {done.blinks.period:.1f} frames")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from lpm.runtime.generate import GenerateConfig, generate

    torch.set_num_threads(max(1, args.threads))
    defaults = {k: v for k, v in (("checkpoint", args.checkpoint), ("vae", args.vae)) if v is not None}
    cfg = GenerateConfig(out=args.out, reference=args.reference, refs=args.refs, audio=args.audio,
                         partner=args.partner, text=args.text, seed=args.seed, refiner=args.refiner,
                         device=args.device, frame=not args.no_frame, frame_debug=args.frame_debug,
                         sequence_parallel=not args.stages and int(os.environ.get("WORLD_SIZE", "1")) > 1,
                         staged=args.stages,
                         **defaults)
    result = generate(cfg)
    if result.written:
        print(result.summary())
    return 0


def cache_shape(text: str) -> tuple[int, int]:
    """``--cache SINK,WINDOW`` -> ``(sink, window)`` (argparse reports a malformed value as a usage error)."""
    try:
        sink, window = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SINK,WINDOW as two integers (e.g. 1,1), got {text!r}") from None
    return sink, window


def track_gain_spec(text: str) -> dict[str, float]:
    """``--track-gain CH=G,...`` -> its mapping (argparse reports a malformed value as a usage error)."""
    from lpm.models.motion_track import TrackGainError, parse_track_gain

    try:
        return parse_track_gain(text)
    except TrackGainError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def guidance_spec(text: str) -> dict[str, float]:
    """``--base-guidance text=1,audio_self=1.5`` -> its mapping ('' -> none; a usage error names a bad item)."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CONDITION=SCALE items (e.g. audio_self=1.5), got {item!r}") \
                from None
    return out


def register(sub, groups) -> None:
    # No model imports here: building the parser stays cheap for every other command.
    p = sub.add_parser("export", help="a run's DiT weights (EMA by default) as one inference checkpoint")
    p.add_argument("--run", required=True, help="run directory (dit.safetensors / dit_ema.safetensors) or a file")
    p.add_argument("--out", required=True, help="the checkpoint to write, e.g. checkpoints/NAME.safetensors")
    p.add_argument("--no-ema", action="store_true", help="export the live weights, not the EMA")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                   help="floating-point storage (load_dit casts back to the model's dtype)")
    p.add_argument("--speech", default=None,
                   help="a `lpm train speech` checkpoint replacing the DiT's speech network (e.g. one retrained on "
                        "more world clips after the DiT trained)")
    p.add_argument("--idle-motion", default=None, metavar="DATA",
                   help="turn on idle head motion (lpm.models.idle_motion), calibrated on the true head-pose tracks "
                        "of DATA's train clips (a world data set, e.g. data/world128)")
    p.add_argument("--idle-scale", type=float, default=1.0,
                   help="the idle motion's amplitudes times this (1 = the spread measured on the data)")
    p.add_argument("--cache", default=None, type=cache_shape, metavar="SINK,WINDOW",
                   help="the streamed model's KV cache: sink chunks kept forever and the rolling window of recent "
                        "chunks (default: the run's)")
    p.add_argument("--online-steps", type=int, default=None, metavar="N",
                   help="denoising steps per chunk of an Online checkpoint, fewer than it was distilled with "
                        "(its first N times, then 0; 1 = one forward per chunk)")
    p.add_argument("--base-steps", type=int, default=None, metavar="N",
                   help="ODE steps per window a Base checkpoint samples with (lpm bench's Base system; its "
                        "--base-steps still overrides)")
    p.add_argument("--base-guidance", default=None, type=guidance_spec, metavar="CONDITION=SCALE,...",
                   help="classifier-free guidance a Base checkpoint samples with (text, audio_self, audio_partner, "
                        "references; '' = none), instead of its training config's")
    p.add_argument("--track-gain", default=None, type=track_gain_spec, metavar="CHANNEL=GAIN,...",
                   help="gains on the motion track an Online or Base checkpoint predicts from its audio, "
                        "e.g. 'emo_*=4' (shell patterns over its motion channels; '' removes them): the DiT "
                        "under-draws what its track carries (docs/learning.md, 'Track gain')")
    p.add_argument("--track-range", default=None, metavar="DATA",
                   help="clip the gained track to the range the true motion of DATA's train clips covers (percentiles "
                        "per channel: 1-99 head angles, 0.1-99.9 the rest; e.g. data/world128): beyond what the DiT "
                        "saw in training it smears the face (docs/learning.md, 'Track range'; '' removes it)")
    p.add_argument("--brow-exemplar", default=None, metavar="LO,HI",
                   help="an Online checkpoint with an expression canvas draws its track's brow raise by moving the "
                        "canvas toward the surprised exemplar, from none at LO to whole at HI (the gained brow raise, "
                        "rig units; docs/learning.md, 'Brow exemplar'; '' removes it)")
    p.add_argument("--restorer", default=None, metavar="PATH",
                   help="a `lpm train restorer` checkpoint the model's decoded frames go through beside the "
                        "global reference (recorded relative to --out's folder; '' removes it)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="offline generation: reference image(s) and voices -> mp4")
    p.add_argument("--reference", default=None, help="global reference image (any size and mode)")
    p.add_argument("--refs", default=None,
                   help="folder of extra references: body_<view>.png, expr_<name>.png (optionally global.png)")
    p.add_argument("--audio", default=None, help="the character's own voice (wav, mp3, flac, ogg, m4a, ...)")
    p.add_argument("--partner", default=None, help="the partner's voice (default: silence)")
    p.add_argument("--text", default="", help="text control (e.g. an emotion: happy)")
    p.add_argument("--checkpoint", default=None,
                   help="DiT checkpoint, an Online export (default checkpoints/online_tiny.safetensors)")
    p.add_argument("--vae", default=None,
                   help="latent codec the DiT was trained with (default checkpoints/vae_tiny.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refiner", action="store_true", help="add the one-step refiner stage")
    p.add_argument("--stages", action="store_true",
                   help="under torchrun: one rank per stage (generate, refine, decode) instead of splitting every "
                        "forward over the ranks (the default under torchrun)")
    p.add_argument("--no-frame", action="store_true",
                   help="keep the references as given (default: crop head and shoulders around the face, like the "
                        "training data; the centre square when no face is found)")
    p.add_argument("--frame-debug", default=None, metavar="PNG",
                   help="write the global reference with its crop (green) and detected face (red) drawn")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; pipeline stages already run in parallel, one core each")
    p.add_argument("--out", required=True, help="the mp4 to write")
    p.set_defaults(func=cmd_generate)
