"""A copy of a world data set whose global reference is each clip's emotion exemplar: the zero-training test of an
expression canvas (``DiTConfig.expression_canvas``) with any model that reads the global image.

Since case-set version 2 the world draws its exemplars with the lips closed (``lpm.world.synth.render_references``).
Everything but the global image is hard-linked from the source.

    PYTHONPATH=scripts .venv/bin/python scripts/exemplar_swap.py --data data/world128 --out data/world128_swap
    lpm bench --suite quick --data data/world128_swap --out runs/bench_swap ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from lpm.data.clip import read_manifest

SPLITS = ("val", "zeroshot")


def swap_clip(src: Path, dst: Path) -> str:
    """Copy one clip with ``refs/global.png`` replaced by its emotion's exemplar; returns the emotion."""
    emotion = json.loads((src / "meta.json").read_text()).get("emotion", "neutral")
    shutil.copytree(src, dst, copy_function=os.link)
    (dst / "refs" / "global.png").unlink()
    shutil.copy(src / "refs" / f"expr_{emotion}.png", dst / "refs" / "global.png")
    return emotion


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/world128")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    src, out = Path(args.data), Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    out.mkdir(parents=True)
    counts: dict[str, int] = {}
    kept = [row for row in read_manifest(src) if row["split"] in SPLITS]
    for row in kept:
        e = swap_clip(src / row["path"], out / row["path"])
        counts[e] = counts.get(e, 0) + 1
    (out / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    print(json.dumps({"out": str(out), "clips_by_emotion": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
