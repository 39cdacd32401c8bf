"""A copy of a world data set whose global reference is each clip's emotion exemplar: the zero-training test of an
expression canvas (``DiTConfig.expression_canvas``) with any model that reads the global image.

``--mouth global`` pastes the global image's mouth (the union of the mouth's boxes at rest and in the exemplar's
pose, ``Renderer.face_regions``, grown by ``--pad`` px and feathered) into the exemplar, so the copy carries the
emotion above the mouth and a mouth at rest. Everything else is hard-linked from the source.

    PYTHONPATH=scripts .venv/bin/python scripts/exemplar_swap.py --data data/world128 --out data/world128_swap \
        --mouth global
    lpm bench --suite quick --data data/world128_swap --out runs/bench_swap ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from lpm.world.identity import sample_identity
from lpm.world.motion import MOTION_INDEX
from lpm.world.render import Renderer
from lpm.world.synth import exemplar_pose

SPLITS = ("val", "zeroshot")


def mouth_mask(meta: dict, size: int, pad: int, emotion: str) -> np.ndarray:
    """``(size, size)`` float in [0, 1]: 1 on the mouth of the global image and of the exemplar, grown and feathered."""
    renderer = Renderer(sample_identity(int(meta["identity"]["seed"]), meta["style"]), size)
    rest = exemplar_pose("neutral")
    mask = Image.new("L", (size, size), 0)
    for pose in (rest, exemplar_pose(emotion)):
        x0, y0, x1, y1 = renderer.face_regions(pose)["mouth"]
        if x1 > x0:
            box = Image.new("L", (size, size), 0)
            box.paste(255, (max(0, x0 - pad), max(0, y0 - pad), min(size, x1 + pad), min(size, y1 + pad)))
            mask = Image.fromarray(np.maximum(np.asarray(mask), np.asarray(box)))
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(max(pad, 1) / 2)), np.float32) / 255.0


def swap_clip(src: Path, dst: Path, mouth: str, pad: int) -> str:
    meta = json.loads((src / "meta.json").read_text())
    shutil.copytree(src, dst, copy_function=os.link)
    emotion = meta.get("emotion", "neutral")
    exemplar = np.asarray(Image.open(src / "refs" / f"expr_{emotion}.png").convert("RGB"), np.float32)
    if mouth == "global":
        glob = np.asarray(Image.open(src / "refs" / "global.png").convert("RGB"), np.float32)
        m = mouth_mask(meta, glob.shape[0], pad, emotion)[..., None]
        exemplar = glob * m + exemplar * (1.0 - m)
    (dst / "refs" / "global.png").unlink()
    Image.fromarray(np.clip(exemplar + 0.5, 0, 255).astype(np.uint8)).save(dst / "refs" / "global.png")
    return emotion


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/world128")
    p.add_argument("--out", required=True)
    p.add_argument("--mouth", choices=("exemplar", "global"), default="global",
                   help="exemplar: the exemplar as it is; global: the global image's mouth pasted in")
    p.add_argument("--pad", type=int, default=3, help="px the mouth's box grows by (--mouth global)")
    args = p.parse_args()
    src, out = Path(args.data), Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    out.mkdir(parents=True)
    counts: dict[str, int] = {}
    kept = []
    for line in (src / "manifest.jsonl").read_text().splitlines():
        clip = json.loads(line)
        if clip.get("split") in SPLITS:
            e = swap_clip(src / clip["path"], out / clip["path"], args.mouth, args.pad)
            counts[e] = counts.get(e, 0) + 1
            kept.append(line)
    (out / "manifest.jsonl").write_text("\n".join(kept) + "\n")
    print(json.dumps({"out": str(out), "mouth": args.mouth, "clips_by_emotion": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
