"""What the world-FID measures: floors of the bench's quick suite from the world's own rig.

Renders the quick suite's clips with the character's rig (no model), from motion tracks that lack one part of
the truth each, and from the track a DiT checkpoint's speech network predicts; scores each like ``lpm bench``
(the probe's features against the truth render; 12 clips, the model systems' subset). Tells how much of a model's
world-FID its motion source costs before any rendering error, and what the VAE alone costs.

    python scripts/wfid_floors.py --checkpoint checkpoints/online_tiny.safetensors --out docs/bench/wfid_floors.md

``--dit-true-track`` adds the Online model itself given the clip's *true* track in place of its speech network's
prediction: its drawing error alone (the rig's row with the same track is the truth, 0).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lpm.audio.mel import LogMel
from lpm.data.clip import image_to_tensor
from lpm.eval.dit_systems import OnlineSystem
from lpm.eval.metrics import pearson
from lpm.eval.suites import load_clip, load_instruments, run_clip_suite, select_clips
from lpm.eval.systems import ClipInputs, System, TruthSystem
from lpm.fsutil import atomic_write_text
from lpm.models.dit import load_dit
from lpm.models.latent_codec import load_codec
from lpm.models.motion_track import to_track, track_scale
from lpm.training.base_samples import to_uint8
from lpm.world.motion import MOTION_INDEX, MOTION_NAMES, NUM_MOTION
from lpm.world.render import Renderer

HEAD = ("head_yaw", "head_pitch", "head_roll")
EMOTION = ("emo_happy", "emo_sad", "emo_surprised", "emo_angry")
# Truth with one group of channels at rest.
GROUPS = {"head pose": HEAD, "blinks": ("blink_l", "blink_r"), "gaze": ("gaze_x", "gaze_y"),
          "brow and smile": ("brow_raise", "smile"), "breath": ("breath",), "emotion": EMOTION}


class RigSystem(System):
    """The rig rendering a track made from the clip's inputs by ``make``."""

    measures_speed = False

    def __init__(self, name: str, make) -> None:
        self.name, self.make = name, make

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        return Renderer(inputs.identity, inputs.res).render_sequence(self.make(inputs))


def without(channels: tuple[str, ...]):
    def make(inputs: ClipInputs) -> np.ndarray:
        m = inputs.truth_motion.copy()
        m[:, [MOTION_INDEX[c] for c in channels]] = 0.0
        return m
    return make


class VaeRoundTrip(System):
    """The truth render encoded and decoded by the VAE: the floor of any latent model."""

    name, measures_speed = "truth through the VAE", False

    def __init__(self, vae: str) -> None:
        self.codec = load_codec(vae)

    @torch.no_grad()
    def generate(self, inputs: ClipInputs) -> np.ndarray:
        video = torch.stack([image_to_tensor(f) for f in TruthSystem().generate(inputs)])[None]
        return np.concatenate([to_uint8(self.codec.decode(self.codec.encode(video[:, s:s + 8]))[0])
                               for s in range(0, video.shape[1], 8)])


class Predicted:
    """The motion a DiT checkpoint's speech network predicts from the clip's audio (and caption), as rig motion;
    the channels it does not predict at rest, the body turn the clip's."""

    def __init__(self, checkpoint: str) -> None:
        self.dit = load_dit(checkpoint).eval()
        self.mel = LogMel(self.dit.cfg.mel)
        self.scale = track_scale(self.dit.cfg.motion_channels).numpy()

    @torch.no_grad()
    def __call__(self, inputs: ClipInputs) -> np.ndarray:
        mels = [self.mel(torch.from_numpy(a)[None].float()) for a in (inputs.self_audio, inputs.partner_audio)]
        n = min(m.shape[1] for m in mels)
        track = self.dit.speech_motion(mels[0][:, :n], mels[1][:, :n], [inputs.caption])[0].float().numpy()
        track = track * self.scale
        f = inputs.num_frames
        track = np.concatenate([track, np.repeat(track[-1:], max(0, f - len(track)), 0)])[:f]
        m = np.zeros((f, NUM_MOTION), np.float32)
        m[:, [MOTION_INDEX[c] for c in self.dit.cfg.motion_channels]] = track
        m[:, MOTION_INDEX["body_yaw"]] = inputs.body_yaw_deg
        return m


class TrueTrackOnline(OnlineSystem):
    """An Online checkpoint streamed as the bench streams it, its speech network's track replaced by the truth."""

    def stream(self, inputs: ClipInputs, chunk_frames: int = 4):
        true = to_track(torch.from_numpy(inputs.truth_motion), MOTION_NAMES, self.model.cfg.motion_channels)[None]

        def predict(cond, first: int, num: int) -> torch.Tensor:  # (1, num, P), the last frame held past the end
            t = true[:, first:first + num]
            return torch.cat([t, t[:, -1:].expand(-1, num - t.shape[1], -1)], 1) if t.shape[1] < num else t

        self.model.predict_motion = predict
        return super().stream(inputs, chunk_frames)


def with_truth(base, channels: tuple[str, ...], held: bool = False):
    """``base``'s motion with ``channels`` from the truth (``held``: only the truth's clip mean added)."""
    def make(inputs: ClipInputs) -> np.ndarray:
        m, t = base(inputs), inputs.truth_motion
        for c in channels:
            i = MOTION_INDEX[c]
            m[:, i] = m[:, i] + t[:, i].mean() - m[:, i].mean() if held else t[:, i]
        return m
    return make


def channel_agreement(truth, system, split: str = "val") -> dict[str, float]:
    """Per motion channel, Pearson r between the probe's reading of ``system``'s frames and of the truth render's
    (the same clips of ``split``, frames pooled): which parts of the motion a renderer draws so the probe sees them.
    Channels that do not vary in the truth are left out."""
    by_id = {r.inputs_id: r for r in truth.readings}
    mine = [r for r in system.readings if r.split == split]
    a = np.concatenate([by_id[r.inputs_id].track.motion for r in mine])
    b = np.concatenate([r.track.motion for r in mine])
    rs = {name: pearson(a[:, i], b[:, i]) for name, i in MOTION_INDEX.items()}
    return {name: r for name, r in rs.items() if not np.isnan(r)}


def emit(lines: list[str], out: str) -> None:
    """Print a markdown table's lines and, with ``out``, write them there (atomically)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        atomic_write_text(out, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/world128")
    ap.add_argument("--checkpoint", default="checkpoints/online_tiny.safetensors")
    ap.add_argument("--vae", default="checkpoints/vae_tiny.safetensors")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--out", default="")
    ap.add_argument("--dit-true-track", action="store_true",
                    help="also stream --checkpoint with the true track (minutes: a DiT on 12 clips)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    inst = load_instruments("checkpoints/probe.safetensors", "checkpoints/identity.safetensors",
                            "checkpoints/states.safetensors")
    rows = select_clips(args.data, "quick")
    loaded = [load_clip(args.data, r) for r in rows]
    pred = Predicted(args.checkpoint)
    systems = [TruthSystem(), VaeRoundTrip(args.vae)]
    systems += [RigSystem(f"truth without {k}", without(v)) for k, v in GROUPS.items()]
    systems += [RigSystem("truth, mouth only", without(sum(GROUPS.values(), ())))]
    systems += [RigSystem("predicted track", pred),
                RigSystem("predicted + true emotion", with_truth(pred, EMOTION)),
                RigSystem("predicted + true emotion + held head", with_truth(with_truth(pred, EMOTION), HEAD, True)),
                RigSystem("predicted + true emotion + head", with_truth(with_truth(pred, EMOTION), HEAD))]
    if args.dit_true_track:
        systems.append(TrueTrackOnline("the Online DiT given the true track", args.checkpoint))
    results, _ = run_clip_suite(systems, rows, loaded, inst, model_clips={"*": args.clips})
    lines = [f"# World-FID floors (rig renders, {args.clips} clips of the quick suite)", "",
             f"Speech network of `{args.checkpoint}`; `python scripts/wfid_floors.py` writes this.", "",
             "| track rendered by the rig (or the DiT) | wFID seen | wFID zero-shot | lip r |",
             "| --- | --- | --- | --- |"]
    for r in results[1:]:
        s, z = r.metrics["seen"], r.metrics["zeroshot"]
        lines.append(f"| {r.name} | {s['world_fid']:.1f} | {z['world_fid']:.1f} | {s['lipsync_r']:.3f} |")
    if args.dit_true_track:  # what the DiT draws of each channel, beside what the VAE round trip keeps
        drawn = [r for r in results if r.name in ("truth through the VAE", "the Online DiT given the true track")]
        rs = [channel_agreement(results[0], r) for r in drawn]
        names = [n for n in MOTION_NAMES if all(n in r for r in rs)]
        lines += ["", "Per channel (seen split): r of the probe's reading of these frames against its reading of the "
                  "truth render.", "", "| channel | " + " | ".join(r.name for r in drawn) + " |",
                  "| --- |" + " --- |" * len(drawn)]
        lines += [f"| {n} | " + " | ".join(f"{r[n]:.2f}" for r in rs) + " |" for n in names]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
