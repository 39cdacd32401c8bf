"""Where the listen F1 of the truth render is lost: the reaction detector per reaction type, on the true motion
and on the instruments' reading of the recorded video, over a split's clips.

    python scripts/reaction_readout.py [--data data/world128] [--split val] [--clips 0] [--stride 1] [--per-frame]
        [--save readings.npz]

Prints, per type (nod, brow raise, head tilt, smile), the true events, hits, misses and false alarms of the bench's
rules (``lpm.eval.metrics.BUMP_RULES``) on both, and the read channel's gain and noise against the truth (a linear
fit over the clips' listening frames), which is what the rule thresholds have to live with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lpm.data.clip import read_manifest
from lpm.eval import DEFAULT_DATA
from lpm.eval import metrics as M
from lpm.eval.reaction_fit import SPEAK, CalibrationClips, count_type, f1_score
from lpm.eval.suites import EDGE_FRAMES, load_clip, load_instruments
from lpm.world.motion import MOTION_INDEX


def load_readings(path: str) -> list[dict]:
    """The clips of a readings cache written by ``read_split(..., save=path)``."""
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    return [{"truth": z[f"t{i}"], "read": z[f"r{i}"], "states": z[f"s{i}"], "reactions": m}
            for i, m in enumerate(meta)]


def read_split(data: str, split: str, clips: int, save: str | None, stride: int = 1,
               per_frame: bool = False) -> list[dict]:
    """Per clip: true motion, read motion, states and true reactions (cached in ``save`` when given);
    ``per_frame``: the gaze as read per frame, not held per fixation (``lpm.eval.fixations``)."""
    if save and Path(save).is_file():
        return load_readings(save)
    rows = [r for r in read_manifest(data) if r["split"] == split][::stride]
    rows = rows[:clips] if clips else rows
    inst = load_instruments()
    if per_frame:
        inst.fixations = None
    out = []
    for k, row in enumerate(rows):
        inputs, truth = load_clip(data, row)
        track = inst.read(inputs.truth_video)
        out.append({"truth": truth.motion, "read": track.motion, "states": truth.states,
                    "reactions": [[e.type, e.frame, e.cue_frame] for e in truth.reactions]})
        print(f"read {k + 1}/{len(rows)} {row['path']}", flush=True)
    if save:
        arrays = {}
        for i, c in enumerate(out):
            arrays.update({f"t{i}": c["truth"], f"r{i}": c["read"], f"s{i}": c["states"]})
        np.savez(save, meta=json.dumps([c["reactions"] for c in out]), **arrays)
    return out


def clips_of(clips: list[dict], key: str) -> CalibrationClips:
    return CalibrationClips(np.stack([c[key] for c in clips]), np.stack([c["states"] for c in clips]),
                            [[M.Event(t, f, cue) for t, f, cue in c["reactions"]] for c in clips])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=0, help="first N clips of the split (0: all)")
    p.add_argument("--stride", type=int, default=1, help="every Nth clip of the split (before --clips)")
    p.add_argument("--per-frame", action="store_true", help="gaze as read per frame (to fit the fixation rule)")
    p.add_argument("--save", default=None, help="cache the readings here (npz), reuse when it exists")
    args = p.parse_args()
    torch.set_num_threads(2)
    clips = read_split(args.data, args.split, args.clips, args.save, args.stride, args.per_frame)
    print(f"{len(clips)} {args.split} clips")
    rules = load_instruments().reaction_rules
    for key, name, r in (("truth", "true motion, motion rules", M.BUMP_RULES),
                         ("read", "reading, motion rules", M.BUMP_RULES),
                         ("read", "reading, the instruments' rules", rules)):
        cc = clips_of(clips, key)
        tally = {t: count_type(cc, t, r[t], EDGE_FRAMES) for t in M.REACTION_TYPES}
        tot = np.sum(list(tally.values()), axis=0)
        print(f"\n{name}: F1 {f1_score(*tot):.3f} (tp {tot[0]} fp {tot[1]} fn {tot[2]})")
        for t, (tp, fp, fn) in tally.items():
            print(f"  {t:10s} F1 {f1_score(tp, fp, fn):.3f}  tp {tp:3d} fp {fp:3d} fn {fn:3d}")
    print("\nread channel against the truth on non-speaking frames (read = gain * truth + offset + noise)")
    for rule in M.BUMP_RULES.values():
        i = MOTION_INDEX[rule.channel]
        x = np.concatenate([c["truth"][c["states"] != SPEAK, i] for c in clips])
        y = np.concatenate([c["read"][c["states"] != SPEAK, i] for c in clips])
        gain, off = np.polyfit(x, y, 1)
        noise = float(np.std(y - (gain * x + off)))
        rx = np.concatenate([M.bump_residual(c["truth"][:, i], rule) for c in clips])
        ry = np.concatenate([M.bump_residual(c["read"][:, i], rule) for c in clips])
        print(f"  {rule.channel:11s} gain {gain:.2f} offset {off:+.2f} noise {noise:.3f} truth std {x.std():.3f}"
              f" | residual r {M.pearson(rx, ry):.2f}, threshold {rule.threshold}")


if __name__ == "__main__":
    main()
