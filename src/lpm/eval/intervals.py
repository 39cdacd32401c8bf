"""Bootstrap confidence intervals over clips (Efron & Tibshirani 1993, ch. 13: the percentile interval).

The clip is the unit of resampling: frames of one clip are strongly correlated (one character, one voice), so
resampling frames would make the intervals far too narrow. A metric is recomputed on ``samples`` resamples of
the clips (with replacement, seeded, so a report is reproducible) and the interval is the central ``level`` share
of those values. Resamples where a metric is undefined (e.g. no speaking clip drawn) are left out of that metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0


def bootstrap_intervals(units: int, statistic: Callable[[np.ndarray], dict[str, float | None]],
                        samples: int = BOOTSTRAP_SAMPLES, level: float = BOOTSTRAP_LEVEL,
                        seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of every value ``statistic`` returns.

    Args:
        units: how many clips there are.
        statistic: clip indices (K,) int64, with repeats -> metric name -> value (None or NaN = undefined).
        samples: resamples drawn; level: coverage of the interval; seed: of the resampling.
    Returns:
        metric name -> (low, high), or None where fewer than half of the resamples define it or there are
        fewer than two clips (no spread to measure).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if units < 2:
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(samples):
        for key, v in statistic(rng.integers(0, units, units)).items():
            if v is not None and np.isfinite(v):
                values.setdefault(key, []).append(float(v))
            else:
                values.setdefault(key, [])
    alpha = (1 - level) / 2
    out: dict[str, tuple[float, float] | None] = {}
    for key, v in values.items():
        if len(v) < samples / 2:
            out[key] = None
            continue
        lo, hi = np.quantile(np.asarray(v), [alpha, 1 - alpha])
        out[key] = (float(lo), float(hi))
    return out


def half_width(interval: tuple[float, float] | None) -> float | None:
    """Half the width of an interval (the "±" of a figure), or None."""
    return None if interval is None else (interval[1] - interval[0]) / 2
