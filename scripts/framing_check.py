"""How well ``lpm.media.framing`` recovers the world's framing from wide, off-centre pictures.

    python scripts/framing_check.py

A world frame (already framed like the training data) of each style is shrunk to SIDE pixels and pasted at a few
places into a 1000 x 700 picture; the crop should be exactly where it was pasted. Prints, per style and size, how
often a face was found and the crop's centre and side errors relative to the pasted side, and the time taken.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from lpm.media.framing import frame_picture
from lpm.world.identity import sample_identity
from lpm.world.motion import neutral_pose
from lpm.world.render import Renderer

STYLES = ("photo", "anime", "toon3d", "creature", "sketch")
SIDES = (120, 200, 400)
PLACES = ((40, 40), (500, 250), (860, 540))  # top-left corners as fractions are scaled to fit each side
SEEDS = (5, 6)


def _median(values: list[float]) -> str:
    return f"{np.median(values):.3f} (max {max(values):.3f})" if values else "-"


def main() -> None:
    print("| style | pasted side | face found | centre error (of side) | side error | time per picture |")
    print("| --- | --- | --- | --- | --- | --- |")
    for style in STYLES:
        frames = [Renderer(sample_identity(seed, style), 256).render_sequence(neutral_pose(1))[0] for seed in SEEDS]
        for side in SIDES:
            found, centre_err, side_err, times = 0, [], [], []
            for frame in frames:
                small = np.asarray(Image.fromarray(frame).resize((side, side)))
                for x, y in PLACES:
                    x, y = min(x, 1000 - side), min(y, 700 - side)
                    canvas = np.full((700, 1000, 3), 90, np.uint8)
                    canvas[y:y + side, x:x + side] = small
                    t0 = time.perf_counter()
                    _, how = frame_picture(canvas)
                    times.append(time.perf_counter() - t0)
                    if how.method != "face":
                        continue
                    found += 1
                    cx, cy, s = how.crop
                    centre_err.append(np.hypot(cx - (x + side / 2), cy - (y + side / 2)) / side)
                    side_err.append(abs(s - side) / side)
            n = len(frames) * len(PLACES)
            print(f"| {style} | {side} | {found}/{n} | {_median(centre_err)} | {_median(side_err)} | "
                  f"{np.median(times):.2f} s |")


if __name__ == "__main__":
    main()
