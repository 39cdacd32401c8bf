"""Paired differences between two systems rated on the same clips, with a paired bootstrap interval.

Two systems' intervals over clips overlap almost always at the quick suite's clip counts (lip r +-0.1, listen F1
+-0.1), so "arm B's figure is below arm A's" cannot be read off the table. Both ran on the same clips, though, and
much of a clip's difficulty is shared (a hard voice is hard for both): resampling the clips *jointly* and recomputing
``metric(B) - metric(A)`` on each resample gives an interval for the difference itself (Efron & Tibshirani 1993,
ch. 13, applied to the paired statistic). When it excludes 0 the systems differ on those clips beyond clip-sampling
noise; when it includes 0 the table cannot tell them apart, whichever point estimate is higher.

Pooled metrics are recomputed per resample exactly as ``scoring.pooled_metrics`` pools them (a lip r over the
concatenated speaking frames, not a mean of per-clip r), so a difference of pooled figures is what is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpm.eval.intervals import BOOTSTRAP_LEVEL, BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, bootstrap_intervals
from lpm.eval.scoring import (
    FID_BOOTSTRAP_SAMPLES,
    FID_INTERVAL_CATEGORIES,
    MIN_DEFINING_CLIPS,
    POOLED_KEYS,
    ClipScore,
    Moments,
    defining_clips,
    fid_from_moments,
    pooled_metrics,
)


@dataclass(frozen=True)
class PairedDifference:
    """``value`` = metric(system) - metric(baseline) on the shared clips; ``low``, ``high``: its paired bootstrap
    interval (None when fewer than ``MIN_DEFINING_CLIPS`` clips define the metric, or it is rarely defined)."""

    value: float
    low: float | None
    high: float | None

    @property
    def differs(self) -> bool:
        """The interval excludes 0: the difference is beyond the clip-sampling noise."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _defined(v) -> bool:
    return v is not None and np.isfinite(v)


def paired_differences(system: list[ClipScore], baseline: list[ClipScore], with_fid: bool = False,
                       samples: int = BOOTSTRAP_SAMPLES, level: float = BOOTSTRAP_LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> dict[str, PairedDifference]:
    """metric -> the difference system - baseline, with its paired bootstrap interval.

    Args:
        system, baseline: the two systems' scores of the same clips, in the same order (K each, K >= 2).
        with_fid: also the world-FID difference (both need probe features and the truth's; ``FID_BOOTSTRAP_SAMPLES``
            resamples, an eigendecomposition each).
    Returns:
        every pooled metric defined for both on all clips; world_fid only with ``with_fid``.
    """
    if len(system) != len(baseline):
        raise ValueError(f"paired scores must cover the same clips: {len(system)} vs {len(baseline)}")
    k = len(system)
    if k < 2:
        return {}
    point_s, point_b = pooled_metrics(system, False), pooled_metrics(baseline, False)
    keys = [key for key in POOLED_KEYS if key != "world_fid" and _defined(point_s[key]) and _defined(point_b[key])]

    def difference(idx: np.ndarray) -> dict[str, float | None]:
        ms, mb = pooled_metrics([system[i] for i in idx], False), pooled_metrics([baseline[i] for i in idx], False)
        return {key: float(ms[key]) - float(mb[key]) if _defined(ms[key]) and _defined(mb[key]) else None
                for key in keys}

    intervals = bootstrap_intervals(k, difference, samples=samples, level=level, seed=seed)
    # A metric that only a clip or two define, in either system, gets no interval (scoring's rule).
    defining_s, defining_b = defining_clips(system), defining_clips(baseline)
    out: dict[str, PairedDifference] = {}
    for key in keys:
        ci = intervals.get(key) if min(defining_s[key], defining_b[key]) >= MIN_DEFINING_CLIPS else None
        out[key] = PairedDifference(float(point_s[key]) - float(point_b[key]), *(ci or (None, None)))
    have_features = all(s.features is not None and s.truth_features is not None for s in (*system, *baseline))
    if with_fid and have_features:
        mine = [Moments.of(s.features) for s in system]
        theirs = [Moments.of(b.features) for b in baseline]
        truth = [Moments.of(s.truth_features) for s in system]

        def fid_difference(idx: np.ndarray) -> float:
            t = [truth[i] for i in idx]
            return fid_from_moments([mine[i] for i in idx], t) - fid_from_moments([theirs[i] for i in idx], t)

        ci = bootstrap_intervals(k, lambda idx: {"world_fid": fid_difference(idx)}, samples=FID_BOOTSTRAP_SAMPLES,
                                 level=level, seed=seed)["world_fid"]
        out["world_fid"] = PairedDifference(fid_difference(np.arange(k)), *(ci or (None, None)))
    return out


def paired_report(results: list, baseline: str) -> dict:
    """Every available system but the truth and ``baseline`` against ``baseline``, per category, on the clips both
    rated (``SystemResult.scores``): {"baseline", "systems": {name: {category: {"clips": K, metric: [value, low,
    high]}}}}. Empty when the baseline is not an available system of the run."""
    by_name = {r.name: r for r in results if r.available}
    if baseline not in by_name:
        return {}
    base = by_name[baseline]
    systems: dict[str, dict] = {}
    for name, res in by_name.items():
        if name in (baseline, "truth"):
            continue
        cats: dict[str, dict] = {}
        for cat, mine in res.scores.items():
            theirs = base.scores.get(cat, {})
            shared = [clip for clip in mine if clip in theirs]
            if len(shared) < 2:
                continue
            diffs = paired_differences([mine[c] for c in shared], [theirs[c] for c in shared],
                                       with_fid=cat in FID_INTERVAL_CATEGORIES)
            cats[cat] = {"clips": len(shared), **{k: [d.value, d.low, d.high] for k, d in diffs.items()}}
        if cats:
            systems[name] = cats
    return {"baseline": baseline, "systems": systems} if systems else {}
