"""Pooling per-clip readings into a category's metrics, with bootstrap intervals over clips.

``ClipScore`` is what one clip contributes (arrays, a match count, booleans): the instruments have already run,
so the metrics of any resample of the clips are cheap to recompute (``intervals.bootstrap_intervals``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lpm.eval import metrics as M
from lpm.eval.intervals import BOOTSTRAP_SAMPLES, bootstrap_intervals

# The world-FID's interval needs an eigendecomposition per resample (the feature dimension squared): fewer
# resamples, and only in these categories (the others are subsets of ``seen``).
FID_BOOTSTRAP_SAMPLES = 100
FID_INTERVAL_CATEGORIES = ("seen", "zeroshot")
# Clips that must each define a metric on their own for it to get an interval.
MIN_DEFINING_CLIPS = 3
# Metrics pooled over clips (everything but speed and counts).
POOLED_KEYS: tuple[str, ...] = (
    "lipsync_r", "av_offset_frames", "silent_mouth_closed", "listen_f1", "listen_precision", "listen_recall",
    "reaction_delay_p50_s", "reaction_delay_p90_s", "state_acc", "pose_err_deg", "text_emotion_acc",
    "identity_sim", "identity_low_share", "world_fid",
)


@dataclass
class ClipScore:
    """One clip's contribution to the pooled metrics.

    Attributes:
        speak_pred, speak_true: (S,) read and true jaw_open over speaking frames (S = 0: too little speech).
        seq_pred, seq_true: (F,) the whole clip's jaw tracks when it has speech (A/V offset), else None.
        silent_jaw: (Q,) read jaw_open on the not-speaking frames.
        match: its reactions matched to the detected ones.
        states_pred, states_true: (F,) state indices.
        pose_err_deg: mean body-turn error; emotion_hit: the clip's emotion read right.
        identity_sim: (F,) cosine of each frame to the reference; identity_low: (F,) bool, below the threshold.
        features, truth_features: (F, D) probe features of the system and of the truth render, or None.
    """

    speak_pred: np.ndarray
    speak_true: np.ndarray
    seq_pred: np.ndarray | None
    seq_true: np.ndarray | None
    silent_jaw: np.ndarray
    match: M.EventMatch
    states_pred: np.ndarray
    states_true: np.ndarray
    pose_err_deg: float
    emotion_hit: bool
    identity_sim: np.ndarray
    identity_low: np.ndarray
    features: np.ndarray | None = None
    truth_features: np.ndarray | None = None


def _finite(x: float | int | None) -> float | int | None:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return x


def _percentile(values: np.ndarray, q: float) -> float | None:
    v = values[np.isfinite(values)]
    return float(np.percentile(v, q)) if v.size else None


def pooled_metrics(scores: list[ClipScore], with_fid: bool = True) -> dict:
    """Every pooled metric over the clips (None where not measurable)."""
    out: dict = dict.fromkeys(POOLED_KEYS)
    if not scores:
        return out
    speech = [s for s in scores if s.speak_pred.size]
    if speech:
        out["lipsync_r"] = _finite(M.pearson(np.concatenate([s.speak_pred for s in speech]),
                                             np.concatenate([s.speak_true for s in speech])))
        seq = [s for s in speech if s.seq_pred is not None]
        if seq:
            out["av_offset_frames"] = M.av_offset_frames(np.concatenate([s.seq_pred for s in seq]),
                                                         np.concatenate([s.seq_true for s in seq]))
    sil = np.concatenate([s.silent_jaw for s in scores])
    out["silent_mouth_closed"] = _finite(M.silent_mouth_closed(sil, np.ones(len(sil), bool)))
    match = sum((s.match for s in scores), M.EventMatch(0, 0, 0, []))
    if match.true_positives + match.false_negatives > 0:
        out["listen_f1"] = _finite(match.f1)
        out["listen_precision"] = _finite(match.precision)
        out["listen_recall"] = _finite(match.recall)
        delays = M.reaction_delays_s(match)
        out["reaction_delay_p50_s"] = _percentile(delays, 50)
        out["reaction_delay_p90_s"] = _percentile(delays, 90)
    out["state_acc"] = M.state_accuracy(np.concatenate([s.states_pred for s in scores]),
                                        np.concatenate([s.states_true for s in scores]))
    out["pose_err_deg"] = float(np.mean([s.pose_err_deg for s in scores]))
    out["text_emotion_acc"] = float(np.mean([s.emotion_hit for s in scores]))
    out["identity_sim"] = float(np.mean(np.concatenate([s.identity_sim for s in scores])))
    out["identity_low_share"] = float(np.mean(np.concatenate([s.identity_low for s in scores])))
    if with_fid and all(s.features is not None and s.truth_features is not None for s in scores):
        out["world_fid"] = _finite(M.frechet_distance(np.concatenate([s.features for s in scores]),
                                                      np.concatenate([s.truth_features for s in scores])))
    return out


@dataclass
class Moments:
    """Sums of a clip's features for a Fréchet distance of any resample: n, sum x (D,), sum x x^T (D, D)."""

    n: int
    s1: torch.Tensor
    s2: torch.Tensor

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        t = torch.from_numpy(np.asarray(x, np.float64))
        return cls(len(t), t.sum(0), t.T @ t)


def fid_from_moments(a: list[Moments], b: list[Moments]) -> float:
    """``metrics.frechet_distance`` of the concatenated features, from per-clip sums (Heusel et al. 2017, eq. 6),
    with ``tr sqrt(S_a S_b)`` as the sum of the square roots of the eigenvalues of ``S_a S_b``."""
    def gauss(ms: list[Moments]) -> tuple[torch.Tensor, torch.Tensor]:
        n = sum(m.n for m in ms)
        s1, s2 = sum(m.s1 for m in ms), sum(m.s2 for m in ms)
        mu = s1 / n
        cov = (s2 - n * torch.outer(mu, mu)) / max(n - 1, 1)
        return mu, cov + M.FID_RIDGE * torch.eye(len(mu), dtype=cov.dtype)

    (ma, sa), (mb, sb) = gauss(a), gauss(b)
    eig = torch.linalg.eigvals(sa @ sb).real.clamp(min=0)
    d = ma - mb
    return float(max(float(d @ d + torch.trace(sa + sb) - 2 * eig.sqrt().sum()), 0.0))


def defining_clips(scores: list[ClipScore]) -> dict[str, int]:
    """Pooled metric -> how many clips define it on their own. A metric that only a clip or two define (lip r when
    one clip has speech) has no spread to resample: its interval would be a point and look precise, so below
    ``MIN_DEFINING_CLIPS`` it gets none."""
    alone = [pooled_metrics([s], False) for s in scores]
    return {key: sum(m.get(key) is not None for m in alone) for key in POOLED_KEYS}


def metric_intervals(scores: list[ClipScore], with_fid: bool = False, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> dict[str, tuple[float, float] | None]:
    """95 % bootstrap intervals over clips of every pooled metric (``world_fid`` only with ``with_fid``)."""
    intervals = bootstrap_intervals(len(scores), lambda idx: pooled_metrics([scores[i] for i in idx], False),
                                    samples=samples, seed=seed)
    intervals.pop("world_fid", None)
    defining = defining_clips(scores)
    for key in list(intervals):
        if defining.get(key, 0) < MIN_DEFINING_CLIPS:
            intervals[key] = None
    if with_fid and len(scores) > 1 and all(s.features is not None and s.truth_features is not None for s in scores):
        mine = [Moments.of(s.features) for s in scores]
        truth = [Moments.of(s.truth_features) for s in scores]
        intervals.update(bootstrap_intervals(
            len(scores), lambda idx: {"world_fid": fid_from_moments([mine[i] for i in idx], [truth[i] for i in idx])},
            samples=FID_BOOTSTRAP_SAMPLES, seed=seed))
    return intervals
