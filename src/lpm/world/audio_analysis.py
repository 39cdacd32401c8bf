"""Analysis of arbitrary speech audio per video frame: energy, pitch, voice activity, lip flap, questions.

Used by the rule-driven "traditional pipeline" controller, which performs any wav without a phoneme list.
Every function takes a mono float signal at ``sample_rate`` and returns one value per video frame,
F = ceil(N / (sample_rate / fps)). Frame i summarises a window centred on the instant i/fps (the same instant
visemes.mouth_track samples), so analysis and phoneme-driven tracks line up.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d, minimum_filter1d

# Pitch (YIN, de Cheveigne & Kawahara 2002).
F0_MIN_HZ = 60.0
F0_MAX_HZ = 500.0
YIN_WINDOW_S = 0.025  # integration window: > one period of F0_MIN_HZ, short enough for gliding pitch
YIN_THRESHOLD = 0.25  # cumulative-mean-normalised difference below this -> periodic (paper's step 4)
YIN_FALLBACK_THRESHOLD = 0.5  # looser bound for loud frames with no dip below YIN_THRESHOLD
LOUD_FRAME_REL = 0.1  # "loud" = RMS above this fraction of the loudest frame (-20 dB)
OCTAVE_CONTEXT_S = 1.0  # octave slips are judged against the median f0 within +- this
OCTAVE_SLIP = 0.7  # octaves away from that median that count as a slip (a question rise stays below)
PITCH_MIN_RMS = 1e-4  # frames quieter than this (-80 dBFS) are never voiced

# Voice activity.
SILENCE_DB = -80.0  # below this a frame is silent whatever the context (numerical noise)
DB_EPS = 1e-8
NOISE_WINDOW_S = 3.0  # the noise floor is the quietest level within this window
LOUD_WINDOW_S = 3.0  # the local speech level is the loudest within this window
NOISE_MARGIN_DB = 12.0  # speech stands at least this far above the noise floor
SPEECH_RANGE_DB = 40.0  # and within this range below the local speech level
HANGOVER_S = 0.25  # inactive gaps shorter than this between active runs are bridged
MIN_RUN_S = 0.06  # active runs shorter than this (clicks) are dropped

# Lip flap.
JAW_RANGE_DB = 30.0  # the jaw opens from closed to JAW_MAX over this loudness range below the local level
JAW_MAX = 0.85
JAW_GAMMA = 1.5  # quiet sounds open the jaw less than linearly
JAW_BAND_HZ = (200.0, 2000.0)  # F1/F2 region: vowels carry the energy here, fricatives do not
CENTROID_MID_HZ = 1200.0  # spectral centroid of a neutral mouth shape
CENTROID_OCTAVES = 1.5  # centroid octaves from the middle that give fully round / fully wide
SHAPE_MAX = 0.8
MOUTH_SMOOTH_FRAMES = 0.6  # Gaussian sigma of the lip-flap mouth, in frames (removes flicker)

# Question intonation.
RISE_WINDOW_S = 0.4  # the tail of a segment where a question's f0 rises
RISE_MIN_VOICED = 4  # voiced frames needed in the tail to judge
RISE_END_FRAMES = 2  # voiced frames whose mean is the end level
RISE_SEMITONES = 1.25  # rise from the tail's trough to the end level that counts as a question
MAX_STEP_SEMITONES = 3.0  # a final frame further than this from its neighbour is a pitch error


def num_frames(n_samples: int, fps: int = 24, sample_rate: int = 16000) -> int:
    """F = ceil(N / (sample_rate / fps))."""
    return math.ceil(n_samples * fps / sample_rate)


def _frames(pcm: np.ndarray, width: int, fps: int, sample_rate: int) -> np.ndarray:
    """Windows of ``width`` samples centred on each frame instant i/fps (zero-padded at the ends).

    Returns:
        (F, width) float64.
    """
    x = np.asarray(pcm, dtype=np.float64).reshape(-1)
    f = num_frames(len(x), fps, sample_rate)
    half = width // 2
    padded = np.pad(x, (half, width))
    centres = np.round(np.arange(f) * sample_rate / fps).astype(np.int64)
    return padded[centres[:, None] + np.arange(width)[None, :]]  # (F, width)


def _hop(fps: int, sample_rate: int) -> int:
    return round(sample_rate / fps)


def frame_rms(pcm: np.ndarray, fps: int = 24, sample_rate: int = 16000) -> np.ndarray:
    """Linear RMS of a one-frame window around each frame instant.

    Returns:
        (F,) float32.
    """
    w = _frames(pcm, _hop(fps, sample_rate), fps, sample_rate)
    return np.sqrt(np.mean(w**2, axis=1)).astype(np.float32)


def _db(rms: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.asarray(rms, dtype=np.float64) + DB_EPS)


def pitch_track(pcm: np.ndarray, fps: int = 24, sample_rate: int = 16000) -> np.ndarray:
    """f0 by YIN (difference function, cumulative-mean normalisation, absolute threshold, parabolic refine).

    Returns:
        (F,) float32 Hz, 0 where unvoiced.
    """
    w = round(YIN_WINDOW_S * sample_rate)
    tau_max = math.ceil(sample_rate / F0_MIN_HZ)
    tau_min = math.floor(sample_rate / F0_MAX_HZ)
    x = _frames(pcm, w + tau_max + 1, fps, sample_rate)  # (F, L)
    f = len(x)
    if f == 0:
        return np.zeros(0, np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    # d(tau) = sum_j (x_j - x_{j+tau})^2 over j < w = e(0) + e(tau) - 2 r(tau)  (YIN eq. 7)
    nfft = 1 << math.ceil(math.log2(x.shape[1] + w))
    spec = np.fft.rfft(x, nfft, axis=1)
    head = np.fft.rfft(x[:, :w], nfft, axis=1)
    r = np.fft.irfft(np.conj(head) * spec, nfft, axis=1)[:, : tau_max + 1]  # (F, tau_max + 1)
    csum = np.concatenate([np.zeros((f, 1)), np.cumsum(x**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    e_tau = csum[:, taus + w] - csum[:, taus]  # (F, tau_max + 1) energy of x[tau : tau + w]
    d = np.maximum(e_tau[:, :1] + e_tau - 2.0 * r, 0.0)
    # Cumulative mean normalised difference (YIN eq. 8).
    cmnd = np.ones_like(d)
    running = np.cumsum(d[:, 1:], axis=1)
    cmnd[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(running, 1e-12)

    # The first local minimum below the threshold (YIN step 4); a dip at the search edge is not a period.
    inner = cmnd[:, tau_min : tau_max - 1]
    dips = (
        (cmnd[:, tau_min + 1 : tau_max] < inner)
        & (cmnd[:, tau_min + 1 : tau_max] <= cmnd[:, tau_min + 2 : tau_max + 1])
        & (cmnd[:, tau_min + 1 : tau_max] < YIN_THRESHOLD)
    )  # (F, tau_max - tau_min - 1), column k is tau = tau_min + 1 + k
    first_dip = np.argmax(dips, axis=1) + tau_min + 1
    # Gliding pitch (question rises) blurs periodicity within a window: a loud frame whose best dip is only
    # moderately aperiodic still counts, at its global minimum (YIN's own fallback, with a looser bound).
    best = np.argmin(cmnd[:, tau_min + 1 : tau_max], axis=1) + tau_min + 1
    rows = np.arange(f)
    rms = np.sqrt(np.mean(x[:, :w] ** 2, axis=1))
    loud = rms > LOUD_FRAME_REL * rms.max()
    fallback = ~dips.any(axis=1) & loud & (cmnd[rows, best] < YIN_FALLBACK_THRESHOLD)
    voiced = dips.any(axis=1) | fallback
    tau = np.where(fallback, best, first_dip)
    # Parabolic interpolation around the minimum for sub-sample period.
    t0 = np.clip(tau, 1, tau_max - 1)
    a, b, c = cmnd[rows, t0 - 1], cmnd[rows, t0], cmnd[rows, t0 + 1]
    denom = a - 2.0 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1.0, denom), 0.0)
    period = t0 + np.clip(shift, -1.0, 1.0)
    voiced &= rms > PITCH_MIN_RMS
    f0 = np.where(voiced, sample_rate / period, 0.0)
    return _fix_octaves(f0, fps).astype(np.float32)


def _fix_octaves(f0: np.ndarray, fps: int) -> np.ndarray:
    """Fold octave slips (a frame at about 2x or 0.5x its neighbours) back to the local median f0."""
    out = f0.copy()
    voiced = np.flatnonzero(f0 > 0)
    if len(voiced) == 0:
        return out
    half = round(OCTAVE_CONTEXT_S * fps)
    logf = np.log2(f0[voiced])
    lo = np.searchsorted(voiced, voiced - half)
    hi = np.searchsorted(voiced, voiced + half, side="right")
    for k, (a, b) in enumerate(zip(lo, hi)):
        off = logf[k] - np.median(logf[a:b])
        if abs(off) > OCTAVE_SLIP:
            out[voiced[k]] = 2.0 ** (logf[k] - np.round(off))
    return out


def segments(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of True in a (F,) bool array."""
    a = np.asarray(active, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], a, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def voice_activity(pcm: np.ndarray, fps: int = 24, sample_rate: int = 16000) -> np.ndarray:
    """Speech frames: energy above an adaptive noise floor and near the local speech level, with hangover.

    Thresholds are relative to the signal's own local levels, so a gain change moves nothing; digital or
    steady-noise silence stays inactive.

    Returns:
        (F,) bool.
    """
    level = _db(frame_rms(pcm, fps, sample_rate))
    if len(level) == 0:
        return np.zeros(0, bool)
    noise_floor = minimum_filter1d(level, max(1, round(NOISE_WINDOW_S * fps)), mode="nearest")
    loud = maximum_filter1d(level, max(1, round(LOUD_WINDOW_S * fps)), mode="nearest")
    threshold = np.maximum(noise_floor + NOISE_MARGIN_DB, loud - SPEECH_RANGE_DB)
    active = (level > threshold) & (level > SILENCE_DB)
    # Hangover: bridge short pauses inside speech (stop closures, word gaps) ...
    runs = segments(active)
    gap = round(HANGOVER_S * fps)
    for (_, e0), (s1, _) in zip(runs[:-1], runs[1:]):
        if s1 - e0 < gap:
            active[e0:s1] = True
    # ... then drop isolated blips.
    for s, e in segments(active):
        if e - s < max(1, round(MIN_RUN_S * fps)):
            active[s:e] = False
    return active


def lipflap_mouth(pcm: np.ndarray, fps: int = 24, sample_rate: int = 16000) -> np.ndarray:
    """A classic lip-flap mouth: F1/F2-band loudness opens the jaw, spectral centroid rounds or spreads.

    Returns:
        (F, 3) float32 [jaw_open, mouth_round, mouth_wide] in 0..1, closed where there is no voice.
    """
    active = voice_activity(pcm, fps, sample_rate)
    f = len(active)
    out = np.zeros((f, 3), np.float32)
    if f == 0 or not active.any():
        return out
    width = 2 * _hop(fps, sample_rate)
    win = _frames(pcm, width, fps, sample_rate) * np.hanning(width)[None, :]
    power = np.abs(np.fft.rfft(win, axis=1)) ** 2  # (F, width // 2 + 1)
    freqs = np.fft.rfftfreq(width, 1.0 / sample_rate)
    band = (freqs >= JAW_BAND_HZ[0]) & (freqs <= JAW_BAND_HZ[1])
    band_db = 10.0 * np.log10(power[:, band].sum(axis=1) / width + DB_EPS)
    # Loudness relative to the local speech level: the loudest vowels open the jaw fully.
    speech_db = np.where(active, band_db, -np.inf)
    ref = maximum_filter1d(speech_db, max(1, round(LOUD_WINDOW_S * fps)), mode="nearest")
    jaw = np.clip((band_db - (ref - JAW_RANGE_DB)) / JAW_RANGE_DB, 0.0, 1.0) ** JAW_GAMMA * JAW_MAX
    centroid = (power * freqs[None, :]).sum(axis=1) / np.maximum(power.sum(axis=1), 1e-12)
    tilt = np.log2(np.maximum(centroid, 1.0) / CENTROID_MID_HZ) / CENTROID_OCTAVES  # <0 dark, >0 bright
    out[:, 0] = jaw
    out[:, 1] = np.clip(-tilt, 0.0, 1.0) * SHAPE_MAX
    out[:, 2] = np.clip(tilt, 0.0, 1.0) * SHAPE_MAX
    out *= active[:, None]
    out = gaussian_filter1d(out, MOUTH_SMOOTH_FRAMES, axis=0, mode="constant")
    return (np.clip(out, 0.0, 1.0) * active[:, None]).astype(np.float32)


def rising_pitch(pitch: np.ndarray, start: int, end: int, fps: int = 24) -> bool:
    """Does f0 rise over the last RISE_WINDOW_S of voicing in frames [start, end)? (question intonation)

    A question's tune dips and then climbs at the very end; a statement ends at its lowest point. So the
    end level (mean of the last RISE_END_FRAMES voiced frames) is compared with the trough of the tail,
    after dropping final frames that jump implausibly (pitch errors as the voice dies away).
    """
    seg = np.asarray(pitch[start:end], dtype=np.float64)
    voiced = np.flatnonzero(seg > 0)
    if len(voiced) < RISE_MIN_VOICED:
        return False
    semitones = 12.0 * np.log2(seg[voiced])
    keep = len(voiced)
    while keep > RISE_MIN_VOICED and abs(semitones[keep - 1] - semitones[keep - 2]) > MAX_STEP_SEMITONES:
        keep -= 1
    voiced, semitones = voiced[:keep], semitones[:keep]
    in_tail = voiced > voiced[-1] - RISE_WINDOW_S * fps
    if in_tail.sum() < RISE_MIN_VOICED:
        return False
    tail = semitones[in_tail]
    end_level = np.mean(tail[-RISE_END_FRAMES:])
    return bool(end_level - np.min(tail[:-1]) >= RISE_SEMITONES)
