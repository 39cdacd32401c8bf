"""Flat memory over a long live session: RSS and time per chunk at minute 1 vs the end (a benchmark, not a test).

    python scripts/session_memory.py --minutes 10 --engine rig --res 128 --out out/session_memory.json
    python scripts/session_memory.py --minutes 3 --engine dit          # a tiny DiT with random weights

One realtime ``Session`` in this process, as ``lpm serve`` runs it (VAD on): a thread streams a conversation of
world voices (both streams, 20 ms packets at real time, looped), another reads every frame and JPEG-encodes it like
the server. Every ``--every`` seconds it records RSS, threads, fps, drops and the mean ms per chunk of
each stage (over the last ``STAGE_WINDOW`` chunks); prints JSON with all samples and minute 1 vs the last sample.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lpm.runtime.engines import Character, WorldCharacter
from lpm.runtime.measure import rss_mb
from lpm.runtime.session import Session, SessionConfig
from lpm.serve.load import PACKET_S, SAMPLE_RATE, conversation_audio, random_tiny_dit
from lpm.serve.protocol import jpeg_bytes


def build_engine(args, tmp: str):
    character = Character(world=WorldCharacter("anime", 42))
    if args.engine == "rig":
        from lpm.runtime.rig_engine import RigEngine

        return RigEngine(character, args.res)
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig

    checkpoint = args.checkpoint or str(random_tiny_dit(Path(tmp) / "tiny_dit.safetensors"))
    return DiTEngine.load(character, DiTEngineConfig(checkpoint=checkpoint, vae=args.vae))


def stream_audio(session: Session, stop: threading.Event, own: np.ndarray, partner: np.ndarray) -> None:
    """Both streams at real time in 20 ms packets, looped, paced by the wall clock."""
    packet, k, t0 = int(PACKET_S * SAMPLE_RATE), 0, time.monotonic()
    while not stop.is_set():
        start = (k * packet) % len(own)
        session.push_self_audio(own[start:start + packet], native=True)
        session.push_partner_audio(partner[start:start + packet], native=True)
        k += 1
        stop.wait(max(0.0, t0 + k * PACKET_S - time.monotonic()))


def read_frames(session: Session, stop: threading.Event) -> None:
    """Take every frame as the server does (JPEG), whether frames come or not."""
    while not stop.is_set() and session.error is None:
        for _, image in session.frames(timeout=0.5):
            jpeg_bytes(image)
            if stop.is_set():
                return


def sample(session: Session, t: float) -> dict:
    stats = session.stats.snapshot()
    top = {k: v for k, v in stats["stage_ms"].items() if "." not in k}
    return {"t_s": round(t, 1), "rss_mb": round(rss_mb(), 1), "threads": threading.active_count(),
            "fps": stats["fps"], "frames": stats["frames"], "chunks": stats["chunks"], "dropped": stats["dropped"],
            "skipped_chunks": stats["skipped_chunks"], "chunk_ms": round(sum(top.values()), 2), "stage_ms": top,
            "latency_p50_s": stats["latency_p50_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--engine", choices=("rig", "dit"), default="rig")
    p.add_argument("--res", type=int, default=256, help="rig frame size")
    p.add_argument("--checkpoint", default=None, help="DiT checkpoint (default: a random tiny DiT)")
    p.add_argument("--vae", default="checkpoints/vae_tiny.safetensors")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    own, partner = conversation_audio(30.0)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(build_engine(args, tmp), SessionConfig(vad="auto")).start()
        stop = threading.Event()
        feeder = threading.Thread(target=stream_audio, args=(session, stop, own, partner), daemon=True)
        feeder.start()
        reader = threading.Thread(target=read_frames, args=(session, stop), daemon=True)
        reader.start()
        t0 = time.monotonic()
        try:
            for k in range(1, int(args.minutes * 60 / args.every) + 1):
                if stop.wait(max(0.0, t0 + k * args.every - time.monotonic())) or session.error is not None:
                    break
                samples.append(sample(session, time.monotonic() - t0))
                print(json.dumps(samples[-1]), flush=True)
        finally:
            stop.set()
            feeder.join(2.0)
            reader.join(2.0)
            error = session.error
            session.close()
    if not samples:
        raise SystemExit(f"no sample taken (session error: {error})")
    minute_1 = min(samples, key=lambda s: abs(s["t_s"] - 60.0))
    last = samples[-1]
    out = {"engine": args.engine, "res": args.res if args.engine == "rig" else None, "minutes": args.minutes,
           "vad": session.vad_backend, "error": None if error is None else str(error),
           "minute_1": minute_1, "end": last,
           "rss_growth_mb_minute_1_to_end": round(last["rss_mb"] - minute_1["rss_mb"], 1),
           "peak_rss_mb": max(s["rss_mb"] for s in samples), "samples": samples}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
