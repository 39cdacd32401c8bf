"""Gaze read as fixations: the face reader's per-frame gaze, held constant between detected saccades.

At 128x128 the iris travels about a pixel vertically over the whole gaze_y range (``render_face.GAZE_Y`` of an eye
a few pixels high), so one frame's gaze_y reading is mostly noise; and where the lids close the iris is hidden
and the reading is junk. Eyes do not drift between saccades: they hold a fixation, then jump in both axes at
once (the world's controller draws gaze as holds of 0.4-2.5 s joined by ~2-frame saccades, as eye trackers
assume: velocity/step-threshold fixation detection, Salvucci & Goldberg 2000). So the reading is

1. blink frames (read lid closure above ``FixationRule.blink``) replaced by interpolation from open-eye frames;
2. cut at saccades: frames where the mean gaze (x, y) of the ``window`` frames after differs from that of the
   ``window`` frames before by more than ``threshold`` (a local maximum of that step);
3. each fixation's gaze set to its median.

gaze_x, read well per frame, marks most saccades; gaze_y gains most from the averaging. The rule is fitted to the
truth render of train clips (``fit_fixation_rule``; ``scripts/fit_fixations.py``), never the bench's clips.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from lpm.world.motion import MOTION_INDEX

GAZE = (MOTION_INDEX["gaze_x"], MOTION_INDEX["gaze_y"])
LIDS = (MOTION_INDEX["blink_l"], MOTION_INDEX["blink_r"])


@dataclass(frozen=True)
class FixationRule:
    """How the per-frame gaze reading becomes fixations (module docstring)."""

    blink: float = 0.2  # read lid closure (0 open .. 1 shut, the larger eye) above which the gaze reading is dropped
    window: int = 5  # frames on each side of a candidate saccade
    threshold: float = 0.05  # step of the mean gaze (rig units, Euclidean over x and y) that counts as a saccade


# Fitted at stop 39 on the shipped face reader's reading of 83 train clips' truth render (scripts/fit_fixations.py;
# docs/bench.md): the grid's best mean of the pooled gaze_x and gaze_y r there (0.937 / 0.620 per frame -> 0.951 /
# 0.678), inside a plateau (window 5-8, threshold 0.02-0.1, blink 0.2-0.3 all within 0.001).
FIXATIONS = FixationRule(blink=0.2, window=5, threshold=0.05)


def saccade_steps(gaze: np.ndarray, window: int) -> np.ndarray:
    """(F, 2) gaze -> (F,) the Euclidean step between the mean of frames [t, t + window) and of [t - window, t)
    (windows clipped at the clip's edges; 0 at t = 0)."""
    f = len(gaze)
    csum = np.concatenate([np.zeros((1, 2)), np.cumsum(gaze, axis=0)])  # (F + 1, 2)
    t = np.arange(1, f)
    a, b = np.maximum(0, t - window), np.minimum(f, t + window)
    before = (csum[t] - csum[a]) / (t - a)[:, None]
    after = (csum[b] - csum[t]) / (b - t)[:, None]
    return np.concatenate([[0.0], np.linalg.norm(after - before, axis=1)])


def fixation_gaze(motion: np.ndarray, rule: FixationRule = FIXATIONS) -> np.ndarray:
    """A copy of a read track (F, NUM_MOTION) whose gaze_x and gaze_y are held per fixation (module docstring).

    A clip whose every frame reads as a blink keeps its gaze as read."""
    out = np.array(motion, dtype=np.float32, copy=True)
    if len(out) < 2:
        return out
    gaze = out[:, GAZE].astype(np.float64)  # (F, 2)
    shut = out[:, LIDS].max(axis=1) > rule.blink  # (F,) lids shut: the iris is hidden
    if shut.all():
        return out
    frames = np.arange(len(out))
    for k in range(2):
        gaze[shut, k] = np.interp(frames[shut], frames[~shut], gaze[~shut, k])
    step = saccade_steps(gaze, rule.window)
    peak = step >= maximum_filter1d(step, 2 * rule.window + 1, mode="nearest")
    cuts = np.flatnonzero(peak & (step > rule.threshold))
    for a, b in itertools.pairwise([0, *cuts.tolist(), len(out)]):
        out[a:b, GAZE] = np.median(gaze[a:b], axis=0)
    return out


def gaze_r(reads: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """Pooled Pearson r of (gaze_x, gaze_y) of read tracks against true motion (each (F, NUM_MOTION)), as the
    bench's validation pools a split's frames."""
    from lpm.eval.metrics import pearson

    read, true = np.concatenate(reads), np.concatenate(truths)
    return pearson(read[:, GAZE[0]], true[:, GAZE[0]]), pearson(read[:, GAZE[1]], true[:, GAZE[1]])


def fit_fixation_rule(reads: list[np.ndarray], truths: list[np.ndarray],
                      blinks: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5), windows: tuple[int, ...] = (3, 5, 8, 12),
                      thresholds: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.25),
                      ) -> tuple[FixationRule, list[dict]]:
    """The grid's rule with the best mean of the pooled gaze_x and gaze_y r on calibration clips (read tracks and
    their true motion), and every row of the grid (the per-frame reading first, as ``rule: None``)."""
    x, y = gaze_r(reads, truths)
    rows: list[dict] = [{"rule": None, "gaze_x_r": x, "gaze_y_r": y}]
    best, best_score = None, -np.inf
    for blink, window, threshold in itertools.product(blinks, windows, thresholds):
        rule = FixationRule(blink, window, threshold)
        x, y = gaze_r([fixation_gaze(r, rule) for r in reads], truths)
        rows.append({"rule": rule, "gaze_x_r": x, "gaze_y_r": y})
        if (x + y) / 2 > best_score:
            best, best_score = rule, (x + y) / 2
    assert best is not None
    return best, rows
