"""End-to-end latency and fps of ``lpm serve`` under 1 and N concurrent sessions (figures for docs/serve.md).

    python scripts/serve_latency.py --sessions 1 8 --seconds 30 --out out/serve_latency.json
    python scripts/serve_latency.py --engine rig --sessions 1 4
    python scripts/serve_latency.py --url ws://HOST:PORT/v1/session --sessions 2     # an already running server

Spawns ``lpm serve`` (a tiny DiT with random weights and the shipped VAE unless ``--checkpoint`` or
``--engine rig``) in a child process, runs each session count in turn on it (``lpm.serve.load``) and prints
one JSON object: per count, latency p50/p95/max over every frame of every session (audio sent -> frame
received), fps per session and the server's drop counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from pathlib import Path

from lpm.serve.load import random_tiny_dit, run_load, spawn_server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8], help="session counts, run one after another")
    p.add_argument("--seconds", type=float, default=30.0, help="audio streamed per session")
    p.add_argument("--engine", choices=("dit", "rig"), default="dit")
    p.add_argument("--checkpoint", default=None, help="DiT checkpoint (default: a random tiny DiT)")
    p.add_argument("--vae", default="checkpoints/vae_tiny.safetensors")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (lpm serve --steps)")
    p.add_argument("--res", type=int, default=128, help="frame size of the rig engine")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (lpm serve --threads)")
    p.add_argument("--ranks", type=int, default=1, help="processes per session (lpm serve --ranks)")
    p.add_argument("--audio", choices=("speech", "tone"), default="speech")
    p.add_argument("--url", default=None, help="measure this running server instead of spawning one")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            serve = ["--max-sessions", str(max(args.sessions)), "--res", str(args.res)]
            if args.engine == "dit":
                checkpoint = args.checkpoint
                if checkpoint is None:
                    tmp = stack.enter_context(tempfile.TemporaryDirectory())
                    checkpoint = str(random_tiny_dit(Path(tmp) / "tiny_dit.safetensors"))
                serve += ["--checkpoint", checkpoint, "--vae", args.vae]
                if args.steps is not None:
                    serve += ["--steps", str(args.steps)]
                if args.ranks > 1:
                    serve += ["--ranks", str(args.ranks)]
            url = stack.enter_context(spawn_server(*serve, threads=args.threads))
        runs = [asyncio.run(run_load(url, n, args.seconds, args.audio)).summary() for n in args.sessions]
    model = args.checkpoint or ("random tiny DiT" if args.engine == "dit" else None)
    out = {"engine": args.engine, "checkpoint": model, "seconds": args.seconds, "threads": args.threads,
           "ranks": args.ranks, "runs": runs}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
