"""Shot boundaries from colour histograms: a cut changes the whole frame's colour distribution at once."""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB = 64  # frames are compared as THUMB x THUMB thumbnails
BINS = 16  # histogram bins per RGB channel
CUT_DISTANCE = 0.15  # half the L1 distance of normalised histograms (0 = same, 1 = disjoint) that marks a cut
CUT_RATIO = 5.0  # and that many times the typical frame-to-frame distance around it (motion changes it slowly)
CONTEXT_FRAMES = 12  # frames either side that give the typical distance


class ShotDetector:
    """Feed frames with ``update``; ``shots`` gives [start, end) frame ranges between cuts."""

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._dist: list[float] = []

    def update(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        thumb = np.asarray(Image.fromarray(frame).resize((THUMB, THUMB), Image.Resampling.BILINEAR))
        q = (thumb.reshape(-1, 3).astype(np.int64) * BINS) // 256  # (P, 3) bin per channel
        hist = np.concatenate([np.bincount(q[:, c], minlength=BINS) for c in range(3)]).astype(np.float32)
        hist /= hist.sum() / 3
        self._dist.append(0.0 if self._prev is None else float(0.5 * np.abs(hist - self._prev).sum() / 3))
        self._prev = hist

    def cuts(self) -> list[int]:
        """Frame indices that start a new shot (excluding 0)."""
        d = np.array(self._dist, np.float32)
        out = []
        for i in range(1, len(d)):
            ctx = np.concatenate([d[max(1, i - CONTEXT_FRAMES): i], d[i + 1: i + 1 + CONTEXT_FRAMES]])
            typical = float(np.median(ctx)) if ctx.size else 0.0
            if d[i] > CUT_DISTANCE and d[i] > CUT_RATIO * typical:
                out.append(i)
        return out

    def shots(self) -> list[tuple[int, int]]:
        """[start, end) ranges covering every frame fed so far."""
        edges = [0, *self.cuts(), len(self._dist)]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
