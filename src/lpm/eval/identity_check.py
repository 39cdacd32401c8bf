"""Does the identity instrument rank? Its separation of identities, and its response to damaged faces.

``identity_sim`` is only worth reading if (a) frames of a character score clearly above frames of another
character of the same style (ROC AUC over frames, ``separation_auc``), and (b) a damaged copy of the truth scores
clearly below the truth itself. ``DEGRADATIONS`` are the damage a generator does: ``blur`` (a soft face),
``swap`` (the face region of another character of the same style pasted in), ``smear`` (the face region
averaged with a shifted copy of itself, as a model that cannot place the features smears them). Besides the mean,
the share of frames below a threshold fixed on the truth render (its 1st percentile) is reported: a few badly
broken frames move the mean little but the share a lot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

# The face band, as fractions of the frame (top, bottom, left, right): brows to chin over the head's drift in
# world clips (eyes at ~37-45 % of the height, the mouth at ~50-58 %). Swaps and smears damage this region.
FACE_CROP = (0.15, 0.65, 0.2, 0.8)
# Percentile of the truth render's frame similarities that fixes the off-identity threshold.
LOW_PERCENTILE = 1.0
BLUR_SIGMA_PX = 2.0  # at 128 px: eyes and mouth lose their edges, the head's colours and shape stay
SMEAR_SHIFT = 0.06  # of the frame width
DEGRADATIONS = ("blur", "swap", "smear")


def _face_box(h: int, w: int) -> tuple[slice, slice]:
    top, bottom, left, right = FACE_CROP
    return slice(round(top * h), round(bottom * h)), slice(round(left * w), round(right * w))


def degrade(frames: np.ndarray, kind: str, other: np.ndarray | None = None, strength: float = 1.0) -> np.ndarray:
    """A damaged copy of frames.

    Args:
        frames: (F, H, W, 3) uint8; kind: one of DEGRADATIONS;
        other: (F, H, W, 3) uint8 frames of another character (``swap`` only);
        strength: scales the blur's sigma and the smear's shift (1 = the validation's damage).
    Returns:
        (F, H, W, 3) uint8.
    """
    x = frames.astype(np.float32)
    h, w = frames.shape[1:3]
    rows, cols = _face_box(h, w)
    if kind == "blur":
        sigma = strength * BLUR_SIGMA_PX * h / 128
        x = gaussian_filter(x, (0, sigma, sigma, 0))
    elif kind == "swap":
        if other is None or other.shape != frames.shape:
            raise ValueError("swap needs frames of another character of the same shape")
        x[:, rows, cols] = other[:, rows, cols]
    elif kind == "smear":
        shift = max(1, round(strength * SMEAR_SHIFT * w))
        face = x[:, rows, cols]
        x[:, rows, cols] = (face + np.roll(face, shift, axis=2) + np.roll(face, -shift, axis=2)) / 3
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half): the ROC AUC."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not pos.size or not neg.size:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@dataclass
class IdentityCheck:
    """The identity instrument's validation on one split's truth render.

    Attributes:
        auc: ROC AUC of own-reference vs same-style-other-reference similarity over frames.
        threshold: the off-identity threshold (1st percentile of the truth frames' similarity).
        truth_mean: mean similarity of the truth frames; truth_low: their share below the threshold.
        degraded: degradation -> (mean similarity, share below the threshold).
    """

    split: str
    clips: int
    frames: int
    auc: float
    threshold: float
    truth_mean: float
    truth_low: float
    degraded: dict[str, tuple[float, float]]

    def ranks(self, margin: float = 0.1) -> bool:
        """Every degradation's low share is at least ``margin`` above the truth's, and AUC >= 0.95."""
        return self.auc >= 0.95 and all(low >= self.truth_low + margin for _, low in self.degraded.values())


def check_identity(embed, clips: list[tuple[str, np.ndarray, np.ndarray]], split: str,
                   stride: int = 4) -> IdentityCheck | None:
    """Validate the identity embedding on truth renders.

    Args:
        embed: (N, H, W, 3) uint8 -> (N, D) unit embeddings.
        clips: (style, global reference (H, W, 3), truth frames (F, H, W, 3)) per clip.
        stride: every ``stride``-th frame is used (neighbouring frames are near copies).
    Returns:
        None with fewer than two clips of one style (no same-style negative).
    """
    refs = embed(np.stack([ref for _, ref, _ in clips]))  # (C, D)
    styles = [s for s, _, _ in clips]
    pos, neg, pairs = [], [], []
    for i, (style, _, frames) in enumerate(clips):
        others = [j for j, s in enumerate(styles) if s == style and j != i]
        if not others:
            continue
        j = others[0]
        x = frames[::stride]
        e = embed(x)
        pos.append(e @ refs[i])
        neg.append(e @ refs[j])
        pairs.append((i, j, x))
    if not pairs:
        return None
    truth = np.concatenate(pos)
    threshold = float(np.percentile(truth, LOW_PERCENTILE))
    degraded = {}
    for kind in DEGRADATIONS:
        sims = []
        for i, j, x in pairs:
            other = clips[j][2][::stride][: len(x)]
            if len(other) < len(x):  # the other clip is shorter: repeat its last frame
                other = np.concatenate([other, np.repeat(other[-1:], len(x) - len(other), 0)])
            sims.append(embed(degrade(x, kind, other)) @ refs[i])
        s = np.concatenate(sims)
        degraded[kind] = (float(s.mean()), float((s < threshold).mean()))
    return IdentityCheck(split, len(pairs), len(truth), roc_auc(truth, np.concatenate(neg)), threshold,
                         float(truth.mean()), float((truth < threshold).mean()), degraded)
