"""``lpm serve`` (the live server) and ``lpm perform`` (an offline NPC performance: an image and a script)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

import numpy as np

from lpm.errors import LpmError

MAX_SCRIPT_CHARS = 20_000  # a script longer than this is refused (espeak would take minutes)


DEFAULT_CHECKPOINT = "checkpoints/online_tiny.safetensors"  # the shipped Online model


def _character(reference: str, frame: bool = True):
    """``--reference``: a world character id (``anime:42``, ``world:anime:42``) or an image file (framed like the
    training data unless ``frame`` is False, ``lpm.media.framing``)."""
    from lpm.media.framing import frame_picture
    from lpm.media.image import read_picture
    from lpm.runtime.engines import Character, WorldCharacter

    world = WorldCharacter.parse(reference)
    if world is not None:
        return Character(world=world)
    return Character(images={"global": frame_picture(read_picture(reference).image, frame)[0]})


def _engine_spec(args):
    import torch

    from lpm.runtime.dit_engine import DiTEngineConfig, resolve_attention_precision

    torch.set_num_threads(max(1, args.threads))
    from lpm.serve.manager import EngineSpec

    checkpoint = None if args.rig else args.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise LpmError(f"--checkpoint {checkpoint} does not exist (the shipped model is {DEFAULT_CHECKPOINT}; "
                       "--rig runs the rule-driven rig engine instead)")
    dit = DiTEngineConfig(vae=args.vae, denoise_steps=args.steps, refiner=args.refiner, device=args.device,
                          precision=args.precision,
                          attention_precision=resolve_attention_precision(args.attention_precision, args.device))
    ranks = getattr(args, "ranks", 1)
    if checkpoint is not None and ranks > 1:  # say it at start, not when the first client arrives
        from lpm.models.dit_config import stored_dit_config
        from lpm.parallel import SequenceGroup
        from lpm.training.checkpoint import read_metadata

        SequenceGroup(world_size=ranks).check_heads(stored_dit_config(read_metadata(checkpoint)["config"]).num_heads)
    return EngineSpec(checkpoint=checkpoint, dit=dit, rig_resolution=args.res, ranks=ranks)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lpm.serve.app import ServerConfig, create_app
    from lpm.serve.protocol import Limits

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.token:
        print(f"lpm serve: warning: listening on {args.host} without --token: anyone who can reach it can "
              "start sessions", file=sys.stderr)
    limits = Limits(idle_timeout_s=args.idle_timeout)
    cfg = ServerConfig(host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                       engine=_engine_spec(args), limits=limits, workers=not args.in_process, threads=args.threads)
    print(f"lpm serve: http://{args.host}:{args.port}/  {cfg.engine.describe()}; measuring capacity ...",
          file=sys.stderr)
    # Keepalive: a client must answer pings within a minute; on a saturated CPU a 20 s reply (uvicorn's default)
    # can be late for a live client, and dead clients are found by the session idle timeout anyway.
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, ws_max_size=limits.max_message_bytes,
                ws_ping_interval=20.0, ws_ping_timeout=60.0, log_level="warning")
    return 0


def cmd_perform(args: argparse.Namespace) -> int:
    from lpm.data.video import write_mp4
    from lpm.runtime.session import Session, SessionConfig
    from lpm.serve.manager import EngineFactory
    from lpm.serve.protocol import parse_voice
    from lpm.world.speech import synthesize

    script = args.script
    path = Path(script)
    if len(script) < 4096 and path.is_file():
        script = path.read_text(encoding="utf-8")
    script = " ".join(script.split())
    if not script:
        raise LpmError("--script is empty")
    if len(script) > MAX_SCRIPT_CHARS:
        raise LpmError(f"--script is longer than {MAX_SCRIPT_CHARS} characters")
    character = _character(args.reference, not args.no_frame)
    voice = parse_voice(args.voice, character)
    pcm = np.asarray(synthesize(script, voice).pcm, np.float32)
    pcm = np.concatenate([pcm, np.zeros(int(args.tail * 16000), np.float32)])  # let the face settle
    engine = EngineFactory(_engine_spec(args)).build(character, seed=args.seed)
    frames = []
    with Session(engine, SessionConfig(realtime=False, vad="off", max_buffer_s=len(pcm) / 16000 + 1)) as session:
        session.set_text(args.text)
        session.push_self_audio(pcm, native=True)
        session.finish()
        frames = [image for _, image in session.frames()]
        if session.error is not None:
            raise LpmError(f"perform failed: {session.error}")
    n = int(round(len(pcm) * 24 / 16000))
    out = write_mp4(args.out, frames[:n], fps=24, audio=pcm[None])
    print(f"wrote {out}: {min(n, len(frames))} frames, {len(pcm) / 16000:.1f} s, engine {engine.name}")
    return 0


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"Online DiT checkpoint (default: the shipped model, {DEFAULT_CHECKPOINT})")
    p.add_argument("--rig", action="store_true",
                   help="run the rule-driven rig engine (the traditional pipeline; world characters only) "
                        "instead of the model")
    p.add_argument("--vae", default="checkpoints/vae_tiny.safetensors", help="codec of the DiT engine")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps per chunk (DiT engine; default: the checkpoint's Online times, else 2)")
    p.add_argument("--refiner", action="store_true", help="add the one-step refiner stage (DiT engine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--res", type=int, default=256, help="frame size of the rig engine")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; pipeline stages already run in parallel, one core each")


def _precision_arg(p: argparse.ArgumentParser, default: str, attention: str) -> None:
    p.add_argument("--precision", choices=("fp32", "int8"), default=default,
                   help=f"DiT compute: int8 quantises the blocks' linears (faster on CPUs; default {default})")
    p.add_argument("--attention-precision", choices=("fp32", "bf16", "auto"), default=attention,
                   help="the cached self-attention's dtype: bf16 is faster on CPUs with avx512_bf16 or AMX "
                        f"(docs/bench/speed_cpu_1step); auto = bf16 where the CPU has them (default {attention})")


def register(sub, groups) -> None:
    from lpm.runtime.dit_engine import SERVING_COMPUTE

    p = sub.add_parser("serve", help="live sessions over WebSocket, with a web page (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require this bearer token from clients")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="live sessions admitted at once (default: the capacity measured at start)")
    p.add_argument("--ranks", type=int, default=1,
                   help="processes per session: the DiT's forwards split over them (sequence parallel; on CUDA "
                        "rank r uses cuda:r; the model's heads must divide by it). One session at a time unless "
                        "--max-sessions")
    p.add_argument("--in-process", action="store_true",
                   help="run sessions in the server's process (default: a worker process per session)")
    p.add_argument("--idle-timeout", type=float, default=120.0, help="close sessions idle this many seconds")
    _engine_args(p)
    _precision_arg(p, SERVING_COMPUTE["precision"], SERVING_COMPUTE["attention_precision"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("perform", help="offline NPC performance: a reference and a script -> mp4")
    p.add_argument("--reference", required=True, help="image file, or a world character STYLE:SEED")
    p.add_argument("--no-frame", action="store_true",
                   help="keep the reference image as given (default: crop head and shoulders around the face)")
    p.add_argument("--script", required=True, help="the text to speak, or a file holding it")
    p.add_argument("--voice", default=None, help="espeak voice, e.g. en-us+f2 (default: the character's)")
    p.add_argument("--text", default="", help="text control (e.g. an emotion: happy)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tail", type=float, default=0.5, help="seconds of silence after the speech")
    _engine_args(p)
    _precision_arg(p, "fp32", "fp32")
    p.set_defaults(func=cmd_perform)
