"""Does a Base DiT render listening reactions? Listen F1 of a few held-out listening clips through the bench's
systems and probe, with the track the DiT predicts from audio (as at inference) or with the true track.

    python scripts/listen_check.py checkpoints/base_tiny.safetensors [--true-track] [--clips 6] [--steps 4]

With ``--true-track`` the speech network's prediction is replaced by the world's true motion of the same frames:
the listen F1 then measures the DiT's rendering alone (the reactions are exactly right in its input). A training
gauge on few clips (wide intervals), not a bench result.
"""

from __future__ import annotations

import argparse
import time

import torch

from lpm.data.clip import read_manifest
from lpm.eval import DEFAULT_DATA
from lpm.eval.dit_systems import BaseSampling, BaseSystem
from lpm.eval.suites import clip_metrics, load_clip, load_instruments, perform_and_read
from lpm.models.dit import DiT
from lpm.models.motion_track import to_track
from lpm.world.motion import MOTION_NAMES


class TrueTrack:
    """Replaces ``DiT.predict_motion`` by the true track of the clip being rated (window offsets followed)."""

    def __init__(self, system: BaseSystem) -> None:
        self.track: torch.Tensor | None = None
        self.offset = 0
        predict, conditioning = DiT.predict_motion, BaseSystem.conditioning
        owner = self

        def predict_motion(dit, cond, first_frame, num_frames):
            out = predict(dit, cond, first_frame, num_frames)
            start = owner.offset + first_frame
            true = owner.track[max(start, 0):start + num_frames]
            out = out.clone()
            out[:, :true.shape[0]] = true.to(out)
            return out

        def window_conditioning(sys, inputs, mel, references, start):
            owner.offset = start
            return conditioning(sys, inputs, mel, references, start)

        DiT.predict_motion = predict_motion
        BaseSystem.conditioning = window_conditioning


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--true-track", action="store_true", help="give the DiT the true track instead of its prediction")
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="ODE steps per Base window")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    inst = load_instruments()
    system = BaseSystem("base", args.checkpoint, sampling=BaseSampling(steps=args.steps))
    true_track = TrueTrack(system) if args.true_track else None
    channels = system.model.cfg.motion_channels
    pairs, t0 = [], time.time()
    for row in read_manifest(args.data, "val"):
        inputs, truth = load_clip(args.data, row)
        if truth.mode not in ("listen", "conversation"):
            continue
        if true_track is not None:
            true_track.track = to_track(torch.from_numpy(truth.motion).float(), tuple(MOTION_NAMES), channels)
        pairs.append((perform_and_read(system, inputs, inst), truth))
        if len(pairs) == args.clips:
            break
    m = clip_metrics(pairs, None, inst, system)
    print(f"{args.checkpoint} ({'true' if args.true_track else 'predicted'} track): listen F1 {m['listen_f1']}, "
          f"precision {m['listen_precision']}, recall {m['listen_recall']}, lip r {m['lipsync_r']} over "
          f"{len(pairs)} clips, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
