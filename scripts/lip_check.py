"""A quick lip-sync check of a DiT checkpoint mid-training: a few held-out speaking clips through the bench's own
systems (Base offline windows, or the Online session) and motion probe; prints lip r and silent-mouth share.

    python scripts/lip_check.py runs/base/dit_ema.safetensors [--online] [--clips 4] [--steps 4]

The figures use the same instruments as ``lpm bench`` on fewer clips (so wider intervals): a training-time gauge,
not a bench result.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lpm.data.clip import read_manifest
from lpm.eval import DEFAULT_DATA
from lpm.eval import metrics as M
from lpm.eval.dit_systems import BaseSampling, BaseSystem, OnlineSystem
from lpm.eval.suites import SPEAK, load_clip, load_instruments, perform_and_read
from lpm.world.motion import MOTION_INDEX


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--online", action="store_true", help="stream it as an Online model (default: Base windows)")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="ODE steps per Base window")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--split", default="val", help="val (held-out identities) or zeroshot (the unseen style)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    inst = load_instruments()  # the shipped probes, state reader and identity embedding
    rows = read_manifest(args.data, args.split)
    system = (OnlineSystem("online", args.checkpoint) if args.online
              else BaseSystem("base", args.checkpoint, sampling=BaseSampling(steps=args.steps)))
    jaw = MOTION_INDEX["jaw_open"]
    pred, true, silent = [], [], []
    t0 = time.time()
    for row in rows:
        inputs, truth = load_clip(args.data, row)
        if truth.mode not in ("speak", "conversation") or (truth.states == SPEAK).sum() < 24:
            continue
        reading = perform_and_read(system, inputs, inst)
        speaking = truth.states == SPEAK
        pred.append(reading.track.motion[speaking, jaw])
        true.append(truth.motion[speaking, jaw])
        silent.append(reading.track.motion[~speaking, jaw])
        r = M.pearson(pred[-1], true[-1])
        print(f"{row['id']}: lip r {r:.3f} ({speaking.sum()} speaking frames)", flush=True)
        if len(pred) == args.clips:
            break
    r = M.lipsync_r(np.concatenate(pred), np.concatenate(true))
    closed = M.silent_mouth_closed(np.concatenate(silent), np.ones(sum(len(s) for s in silent), bool))
    print(f"{args.checkpoint}: lip r {r:.3f} over {len(pred)} clips, silent mouth closed {closed:.3f}, "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
