"""docs/learning_curves.png: the audio-use checks and the loss of consecutive Base runs on one step axis.

    python scripts/plot_learning.py --out docs/learning_curves.png runs/base_motion:0:544 runs/base_spatial:544

Each argument is RUN[:OFFSET[:LAST]]: the run's log.jsonl, its steps shifted by OFFSET, rows after LAST dropped
(a run continued from that step's checkpoint by the next one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lpm.training.base_plots import GAP_LABELS, moving_average


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, spec in enumerate(args.runs):
        parts = spec.split(":")
        run, offset = Path(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        last = int(parts[2]) if len(parts) > 2 else None
        rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines() if r.strip()]
        rows = [r for r in rows if last is None or r["step"] <= last]
        steps = np.array([r["step"] + offset for r in rows])
        loss = np.array([r["loss"] for r in rows])
        ax1.plot(steps, moving_average(loss, 100), label=f"{run.name} (mean of 100)")
        for j, (key, label) in enumerate(GAP_LABELS.items()):
            pts = [(r["step"] + offset, 100 * r[key]) for r in rows if key in r]
            if pts:
                ax2.plot(*zip(*pts), "o-", ms=3, color=f"C{j}", alpha=0.5 + 0.5 * (i == len(args.runs) - 1),
                         label=f"{label} [{run.name}]")
        if offset:
            for ax in (ax1, ax2):
                ax.axvline(offset, color="k", lw=0.5, ls=":")
    ax1.set_xlabel("fine-tuning step (batch 4 x 8 frames)")
    ax1.set_ylabel("x0-space loss, mouth weighted")
    ax1.legend(fontsize=8)
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("fine-tuning step")
    ax2.set_ylabel("x0 error rise at t = 0.7-0.95 (%)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
