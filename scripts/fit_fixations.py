"""Fit the gaze fixation rule (``lpm.eval.fixations``) on the truth render of train clips, and show it on others.

    PYTHONPATH=scripts python scripts/fit_fixations.py --fit runs/gaze/read_train.npz \
        --show runs/gaze/read_val.npz runs/gaze/read_zeroshot.npz

Each npz is a cache of ``scripts/reaction_readout.py --save`` (the shipped instruments' per-frame reading of a
split's truth render, with the true motion), read per frame: ``reaction_readout.py --split train --stride 3
--per-frame --save runs/gaze/read_train.npz`` (83 clips, ~4 min), likewise ``--split val`` and ``--split zeroshot``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reaction_readout import load_readings

from lpm.eval.fixations import fit_fixation_rule, fixation_gaze, gaze_r


def load(path: str) -> tuple[list, list]:
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no readings cache (scripts/reaction_readout.py --per-frame --save {path})")
    clips = load_readings(path)
    return [c["read"] for c in clips], [c["truth"] for c in clips]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fit", required=True, help="readings cache of the calibration clips (train split)")
    p.add_argument("--show", nargs="*", default=[], help="readings caches to report the fitted rule on")
    args = p.parse_args()
    reads, truths = load(args.fit)
    rule, rows = fit_fixation_rule(reads, truths)
    print(f"fit on {len(reads)} clips ({args.fit}); pooled r gaze_x / gaze_y")
    for row in rows:
        print(f"  {row['rule'] or 'per frame'}: {row['gaze_x_r']:.3f} / {row['gaze_y_r']:.3f}")
    print(f"best: {rule}")
    for path in args.show:
        reads, truths = load(path)
        x0, y0 = gaze_r(reads, truths)
        x1, y1 = gaze_r([fixation_gaze(r, rule) for r in reads], truths)
        print(f"{path} ({len(reads)} clips): gaze_x {x0:.3f} -> {x1:.3f}, gaze_y {y0:.3f} -> {y1:.3f}")


if __name__ == "__main__":
    main()
