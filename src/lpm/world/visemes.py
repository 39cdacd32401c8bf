"""Phonemes -> visemes -> per-frame mouth targets (jaw_open, mouth_round, mouth_wide), with coarticulation.

The track is built on a fine time grid: each phoneme writes its viseme's targets over its span (diphthongs
split into two visemes), shifted ``ANTICIPATION_S`` earlier so the mouth heads for a sound slightly before it
is heard; a Gaussian then blends neighbouring targets (no frame-to-frame jitter). Bilabials (p b m) get a
separate closure envelope that multiplies the jaw, so the lips really meet however short the consonant is.
Frame i samples the instant i/fps. A vowel's target is reached within one frame of its start sample.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lpm.world.speech import STRESS_MARKS, Phoneme, is_pause, is_vowel

# Viseme class -> (jaw_open, mouth_round, mouth_wide) targets, all 0..1 (motion.py's contract).
# Vowel jaws stay >= 0.45 so every vowel visibly opens the mouth, even the close ones (i, u).
VISEMES: dict[str, tuple[float, float, float]] = {
    "sil": (0.0, 0.0, 0.0),  # silence: closed, neutral
    "PP": (0.0, 0.0, 0.0),  # p b m: lips pressed together
    "FF": (0.1, 0.0, 0.25),  # f v: lower lip to upper teeth
    "TH": (0.2, 0.0, 0.2),  # T D: tongue between teeth
    "DD": (0.2, 0.0, 0.3),  # t d: tongue tip on the ridge
    "kk": (0.3, 0.0, 0.2),  # k g N x h: back of the tongue, jaw a little open
    "CH": (0.15, 0.6, 0.0),  # tS dZ S Z: lips pushed forward
    "SS": (0.1, 0.0, 0.5),  # s z: teeth together, lips spread
    "nn": (0.2, 0.0, 0.25),  # n l: tongue up, jaw slightly open
    "RR": (0.2, 0.45, 0.0),  # r: slight rounding
    "aa": (0.85, 0.0, 0.3),  # open vowels: a A V
    "E": (0.6, 0.0, 0.55),  # mid front / central vowels: e E @ 3
    "ih": (0.45, 0.0, 0.8),  # close front vowels: i I
    "oh": (0.65, 0.7, 0.0),  # mid back rounded: o O
    "ou": (0.45, 0.9, 0.0),  # close rounded: u U w y
}

# espeak mnemonic (stress marks and length/variant suffixes removed) -> viseme class.
_CONSONANTS: dict[str, str] = {
    **dict.fromkeys(("p", "b", "m", "m-"), "PP"),
    **dict.fromkeys(("f", "v", "pf", "B"), "FF"),
    **dict.fromkeys(("T", "D"), "TH"),
    **dict.fromkeys(("t", "d", "ts", "dz", "t^", "d^", "?"), "DD"),
    **dict.fromkeys(("k", "g", "N", "x", "G", "Q", "h", "C", "c", "J", "q", "X"), "kk"),
    **dict.fromkeys(("tS", "dZ", "S", "Z", "S;", "Z;"), "CH"),
    **dict.fromkeys(("s", "z", "s;", "z;"), "SS"),
    **dict.fromkeys(("n", "n^", "l", "l^", "L", "n-", "l-"), "nn"),
    **dict.fromkeys(("r", "R", "r-", "*", "R2", "rr", "R3"), "RR"),
    "w": "ou",
    "j": "ih",
}
_VOWELS: dict[str, str] = {
    **dict.fromkeys(("a", "A", "V", "&", "{", "6", "a#"), "aa"),
    **dict.fromkeys(("e", "E", "@", "3", "e@", "@2", "@5", "@L"), "E"),
    **dict.fromkeys(("i", "I", "I2", "I#", "i@"), "ih"),
    **dict.fromkeys(("o", "O", "0", "Y", "W", "2", "9", "8", "o@", "O@"), "oh"),
    **dict.fromkeys(("u", "U", "y", "U@", "u#"), "ou"),
}
# Diphthongs move between two visemes; the first takes this share of the phoneme's span.
_DIPHTHONGS: dict[str, tuple[str, str]] = {
    "aI": ("aa", "ih"),
    "aU": ("aa", "ou"),
    "eI": ("E", "ih"),
    "oU": ("oh", "ou"),
    "OI": ("oh", "ih"),
    "OY": ("oh", "ih"),
    "aI@": ("aa", "E"),
    "aU@": ("aa", "E"),
    "i@": ("ih", "E"),
    "I@": ("ih", "E"),
    "e@": ("E", "E"),
    "U@": ("ou", "E"),
}
DIPHTHONG_FIRST_SHARE = 0.6
# Suffix characters that mark length, nasality or a language variant, not a different mouth shape.
_SUFFIX_MARKS = ":;#~-0123456789!"

GRID_RATE = 1000  # Hz of the fine time grid the targets are drawn on
ANTICIPATION_S = 0.03  # the mouth moves toward a sound this much before it is heard (~0.7 frame at 24 fps)
SMOOTH_SIGMA_S = 0.02  # Gaussian blending of neighbouring targets (coarticulation)
CLOSURE_SIGMA_S = 0.006  # the lip closure of p/b/m is sharper than the jaw's blending
# A p/b/m closure lasts at least this many frame periods, so a frame instant always lands on closed lips;
# it is extended backwards, where espeak's stop closure (silence) sits before the burst it reports.
MIN_CLOSURE_FRAMES = 1.4


def _base(symbol: str) -> str:
    """A mnemonic without stress marks in front and length/variant marks after its first character."""
    head = symbol.lstrip(STRESS_MARKS)
    if not head:
        return ""
    return head[0] + head[1:].rstrip(_SUFFIX_MARKS)


def _lookup(symbol: str) -> tuple[str, ...]:
    """The viseme class(es) of one phoneme: one, or two for a diphthong."""
    if is_pause(symbol):
        return ("sil",)
    head = symbol.lstrip(STRESS_MARKS)
    for key in (head, _base(symbol)):
        if key in _DIPHTHONGS:
            return _DIPHTHONGS[key]
        if key in _VOWELS:
            return (_VOWELS[key],)
        if key in _CONSONANTS:
            return (_CONSONANTS[key],)
    first = head[:1]
    if is_vowel(symbol):
        return (_VOWELS.get(first, "E"),)
    return (_CONSONANTS.get(first, "nn"),)


def phoneme_to_viseme(symbol: str) -> str:
    """The viseme class of an espeak phoneme mnemonic (a diphthong gives its first part)."""
    return _lookup(symbol)[0]


def mouth_track(
    phonemes: list[Phoneme], n_frames: int, fps: int = 24, sample_rate: int = 16000, offset: int = 0
) -> np.ndarray:
    """Per-frame mouth targets for a phoneme sequence placed ``offset`` samples into the track.

    Returns:
        (n_frames, 3) float32 [jaw_open, mouth_round, mouth_wide] in 0..1; frame i is the instant i/fps.
    """
    # The grid starts `margin` before frame 0, so anticipated motion and closures just before the track's
    # start are drawn (then blended) instead of being cut off.
    margin = round((ANTICIPATION_S + MIN_CLOSURE_FRAMES / fps + 4 * SMOOTH_SIGMA_S) * GRID_RATE)
    n_grid = math.ceil(n_frames / fps * GRID_RATE) + 1 + margin
    targets = np.zeros((n_grid, 3), dtype=np.float64)  # (G, 3)
    closure = np.zeros(n_grid, dtype=np.float64)  # (G,) 1 where the lips must meet
    lead = round(ANTICIPATION_S * GRID_RATE)

    def to_grid(sample: float) -> int:
        return min(max(round((sample + offset) / sample_rate * GRID_RATE) - lead + margin, 0), n_grid)

    for p in phonemes:
        classes = _lookup(p.symbol)
        bounds = [p.start, p.end]
        if len(classes) == 2:
            bounds.insert(1, p.start + DIPHTHONG_FIRST_SHARE * (p.end - p.start))
        for cls, a, b in zip(classes, bounds[:-1], bounds[1:]):
            g0, g1 = to_grid(a), to_grid(b)
            targets[g0:g1] = VISEMES[cls]
            if cls == "PP":
                min_span = MIN_CLOSURE_FRAMES / fps * sample_rate
                closure[to_grid(min(a, b - min_span)) : g1] = 1.0

    # mode="constant" pads with zeros: outside the track the mouth is closed.
    smooth = gaussian_filter1d(targets, SMOOTH_SIGMA_S * GRID_RATE, axis=0, mode="constant")
    closure = gaussian_filter1d(closure, CLOSURE_SIGMA_S * GRID_RATE, mode="constant")
    smooth[:, 0] *= 1.0 - np.clip(closure, 0.0, 1.0)
    idx = np.minimum(np.round(np.arange(n_frames) / fps * GRID_RATE).astype(np.int64) + margin, n_grid - 1)
    return np.clip(smooth[idx], 0.0, 1.0).astype(np.float32)
