"""Which facial-expression exemplar a motion track calls for.

The DiT's track carries the caption's emotion (the ``emo_<name>`` channels the speech network predicts from the
caption and audio: the right emotion on 29 of 29 held-out clips, docs/learning.md stop 26), but the DiT draws it
faintly (text emotion 0.38 against the rig's 0.76). The character's reference set holds one exemplar per emotion
(``expr_<name>``: this character's brows, cheeks, lids and mouth for it, in pixels). ``expression_kind`` names the
exemplar of a track's strongest emotion; the DiT's expression canvas (``DiTConfig.expression_canvas``) and the
restorer (``RestorerConfig.reference``) draw on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GLOBAL = "global"
# An emotion channel below this (track units = rig units, 0..1) is no emotion: the global image stands. The world
# draws a clip's emotion at 0.34-0.99; the speech network's predicted channels stay below 0.15 on neutral clips
# (scripts/track_emotion.py).
EXPRESSION_FLOOR = 0.15


def emotion_channels(channels: Sequence[str]) -> list[str]:
    """The ``emo_<name>`` channels of a track layout, in its order."""
    return [c for c in channels if c.startswith("emo_")]


def exemplar_of(channel: str) -> str:
    """The reference kind of an emotion channel: ``emo_sad`` -> ``expr_sad``."""
    if not channel.startswith("emo_"):
        raise ValueError(f"{channel!r} is not an emo_<name> channel")
    return f"expr_{channel[4:]}"


def expression_kind(emotions: Sequence[float], names: Sequence[str]) -> str:
    """The reference kind a track's emotion calls for: ``expr_<name>`` of the strongest of ``emotions`` (values of
    the ``emo_<name>`` channels ``names``, e.g. a chunk's mean; the first of equal ones), or ``global`` when none
    reaches ``EXPRESSION_FLOOR``."""
    if len(emotions) != len(names):
        raise ValueError(f"expression_kind: {len(emotions)} values for {len(names)} channels")
    if not names:
        return GLOBAL
    best = max(range(len(names)), key=lambda i: float(emotions[i]))
    if float(emotions[best]) < EXPRESSION_FLOOR:
        return GLOBAL
    return exemplar_of(names[best])


# The exemplar whose brows are raised (the world renders ``expr_surprised`` with brow_raise 0.8): a brow raise of the
# track is drawn by moving the canvas toward it (``brow_exemplar_weight``).
BROW_EXEMPLAR = "expr_surprised"


def brow_bounds(value: object) -> tuple[float, float]:
    """``(lo, hi)`` floats from a stored or given brow exemplar setting (a pair, or ``"lo,hi"``), ``lo < hi``; a
    ``ValueError`` naming what was wrong otherwise."""
    if isinstance(value, str):
        value = value.split(",")
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"expected two numbers lo,hi (the brow raise where the move toward {BROW_EXEMPLAR} starts "
                         f"and where it is whole), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"expected finite lo < hi, got {lo}, {hi}")
    return lo, hi


def brow_exemplar_weight(brow: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """How far each frame's canvas moves toward ``BROW_EXEMPLAR`` for its brow raise ``brow (B, F)`` (rig units =
    track units): ``(brow - lo) / (hi - lo)`` clamped to 0..1 (``DiT.canvas`` leaves out the frames whose canvas
    already is that exemplar's)."""
    lo, hi = brow_bounds(bounds)
    return ((brow - lo) / (hi - lo)).clamp(0, 1)
