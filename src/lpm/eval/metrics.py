"""Bench metrics as pure functions of tracks (numpy arrays), events and features: no models, no files.

Frame index at 24 fps is the unit of time. Tracks come from the motion probe (generated frames) or from the
ground-truth rig motion; events are ``Event`` records (type, onset frame).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy.ndimage import median_filter, percentile_filter

from lpm.events import MATCH_TOLERANCE_FRAMES, Event, EventMatch, match_events  # noqa: F401 (the bench's API)

FPS = 24
# Reaction event types read from tracks; each is a listening reaction of the world's controller.
REACTION_TYPES: tuple[str, ...] = ("nod", "brow_raise", "head_tilt", "smile")
# Mouth counts as closed below this jaw_open (0..1): the rest pose is 0, and the probe reads jaw_open with a
# mean absolute error of 0.1 on held-out identities, so a closed mouth reads up to about this.
MOUTH_CLOSED_JAW = 0.2
# Search range of the A/V offset, frames either way.
MAX_AV_LAG = 8
FID_RIDGE = 1e-6


@dataclass(frozen=True)
class BumpRule:
    """How one reaction shows in one channel: a departure from a slow baseline, sustained for a while.

    sign: -1 for dips (nods pull the pitch down), +1 for rises, 0 for either way (tilts go left or right).
    """

    channel: str
    sign: int
    threshold: float  # departure from the baseline that counts, in the channel's units
    min_frames: int  # at least this many frames beyond the threshold
    baseline_window: int  # frames of the sliding baseline (several times the reaction's length)
    baseline_percentile: float  # 50 = median; lower for channels whose reactions are long plateaus
    merge_gap: int  # bumps closer than this (frames) are one event (a double nod)


# Thresholds sit at about half the controller's reaction amplitude (nods 6-11 deg over 0.45 s, brow raises +0.75
# for 0.9 s, tilts 9 deg for 0.9 s, smiles +0.8 for 1.8 s; nods at a third, as the probe reads pitch at ~0.8 gain)
# and above its idle drift (pitch 1.5 deg, roll 1.2 deg standard deviation, over about a second, removed by the
# baseline). On true motion of all 320 world clips the rules find reactions with F1 0.93.
BUMP_RULES: dict[str, BumpRule] = {
    "nod": BumpRule("head_pitch", -1, 2.5, 3, 49, 50.0, 10),
    "brow_raise": BumpRule("brow_raise", +1, 0.3, 6, 121, 25.0, 6),
    "head_tilt": BumpRule("head_roll", 0, 4.5, 6, 121, 50.0, 6),
    "smile": BumpRule("smile", +1, 0.35, 8, 193, 25.0, 12),
}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant or empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def lipsync_r(pred_jaw: np.ndarray, true_jaw: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson r of the read jaw opening against the truth, over the frames of ``mask`` (speaking frames).

    Args:
        pred_jaw, true_jaw: (F,); mask: (F,) bool or None for all frames.
    """
    if mask is not None:
        pred_jaw, true_jaw = pred_jaw[mask], true_jaw[mask]
    return pearson(pred_jaw, true_jaw)


def av_offset_frames(pred: np.ndarray, truth: np.ndarray, max_lag: int = MAX_AV_LAG) -> int | None:
    """Lag (frames) that maximises the correlation of ``pred`` with ``truth``; positive = ``pred`` is late.

    ``pred[t + lag]`` best matches ``truth[t]``. Both tracks are mean-removed; None when either is flat.
    """
    p = np.asarray(pred, np.float64) - np.mean(pred)
    t = np.asarray(truth, np.float64) - np.mean(truth)
    if p.size <= 2 * max_lag or p.std() < 1e-9 or t.std() < 1e-9:
        return None
    n = p.size
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        a = p[max(lag, 0): n + min(lag, 0)]
        b = t[max(-lag, 0): n + min(-lag, 0)]
        scores.append(float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return int(np.argmax(scores)) - max_lag


def silent_mouth_closed(pred_jaw: np.ndarray, silent: np.ndarray, closed_below: float = MOUTH_CLOSED_JAW) -> float:
    """Share of silent frames (``silent`` True) whose read jaw opening is below ``closed_below``; NaN if none."""
    silent = np.asarray(silent, bool)
    if not silent.any():
        return float("nan")
    return float((np.asarray(pred_jaw)[silent] < closed_below).mean())


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def bump_residual(track: np.ndarray, rule: BumpRule) -> np.ndarray:
    """The track minus its slow baseline, signed so that the reaction is positive.

    Args:
        track: (F,) one channel.
    """
    x = np.asarray(track, np.float64)
    size = min(rule.baseline_window, max(1, x.size))
    if rule.baseline_percentile == 50.0:
        base = median_filter(x, size=size, mode="nearest")
    else:
        base = percentile_filter(x, rule.baseline_percentile, size=size, mode="nearest")
    r = x - base
    return np.abs(r) if rule.sign == 0 else rule.sign * r


def detect_bumps(residual: np.ndarray, rule: BumpRule) -> list[int]:
    """Onset frames of runs of ``residual`` above the rule's threshold, merged across short gaps.

    The onset is walked back from the run's start to where the residual first rose above a third of the
    threshold, so it lands near the reaction's true start rather than its half-height.
    """
    runs = [(s, e) for s, e in _runs(residual > rule.threshold)]
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < rule.merge_gap:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    onsets = []
    for s, e in merged:
        if e - s < rule.min_frames:
            continue
        k = s
        while k > 0 and residual[k - 1] > rule.threshold / 3:
            k -= 1
        onsets.append(int(k))
    return onsets


def detect_reactions(tracks: dict[str, np.ndarray], allowed: np.ndarray | None = None,
                     rules: dict[str, BumpRule] = BUMP_RULES) -> list[Event]:
    """Reaction events read from channel tracks (nods, brow raises, head tilts, smiles).

    Args:
        tracks: channel name -> (F,) track (probe reading or truth motion).
        allowed: (F,) bool; only events with onset on an allowed frame are kept (e.g. not speaking).
    """
    events = []
    for kind, rule in rules.items():
        if rule.channel not in tracks:
            continue
        for onset in detect_bumps(bump_residual(tracks[rule.channel], rule), rule):
            if allowed is None or allowed[min(onset, len(allowed) - 1)]:
                events.append(Event(kind, onset))
    return sorted(events, key=lambda e: (e.frame, e.type))


def reaction_delays_s(match: EventMatch, fps: int = FPS) -> np.ndarray:
    """Seconds from each matched true reaction's cue to the detected onset (the reaction delay distribution)."""
    return np.array([(d.frame - t.cue_frame) / fps for t, d in match.pairs if t.cue_frame is not None])


def state_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of frames whose read state (index into speak/listen/idle) equals the truth."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    return float((pred == truth).mean()) if truth.size else float("nan")


def angle_error_deg(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute angular difference in degrees (wrapping at +-180)."""
    d = (np.asarray(pred, np.float64) - np.asarray(target, np.float64) + 180.0) % 360.0 - 180.0
    return float(np.abs(d).mean()) if d.size else float("nan")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    Args:
        a: (N, D); b: (M, D).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu = a.mean(0) - b.mean(0)
    # A tiny ridge keeps the product's square root defined when there are fewer samples than dimensions.
    ridge = FID_RIDGE * np.eye(a.shape[1])
    sa, sb = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sa @ sb)
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise from a near-singular product
    return float(max(mu @ mu + np.trace(sa + sb - 2 * covmean), 0.0))


def stream_latencies(compute_s: np.ndarray, start_s: np.ndarray, ready_s: np.ndarray) -> np.ndarray:
    """Audio-to-frame latency of each chunk when audio arrives in real time and chunks are computed in order.

    Chunk k shows the instants from ``start_s[k]`` on; it can be computed once the audio it needs has arrived
    (``ready_s[k]``: its end plus any lookahead, or the end of the whole block an offline system analyses) and
    the previous chunk is done. Its latency is the time from its first instant to its frames being out: for a
    streaming model, chunk length + lookahead + compute, plus any queueing when compute falls behind real time.

    Args:
        compute_s, start_s, ready_s: (K,) seconds.
    """
    done = 0.0
    out = []
    for c, start, ready in zip(np.asarray(compute_s, np.float64), start_s, ready_s):
        done = max(float(ready), done) + c
        out.append(done - float(start))
    return np.array(out)


def chunk_times(chunk_frames: list[int], needs_until: list[int], fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
    """(start_s, ready_s) of each chunk from its length and the frame up to which it needs audio."""
    starts = np.concatenate([[0], np.cumsum(chunk_frames)[:-1]]) / fps
    return starts, np.asarray(needs_until, np.float64) / fps


def drift_per_minute(values: np.ndarray) -> float:
    """Least-squares slope of a per-minute series (units per minute); NaN for fewer than two points."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.flatnonzero(ok).astype(np.float64), v[ok], 1)[0])
