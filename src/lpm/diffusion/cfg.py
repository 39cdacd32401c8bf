"""Classifier-free guidance over separately droppable conditions (Ho & Salimans 2022).

Training drops each condition on its own (text, own audio, partner audio, extra references), so at sampling
each can be guided with its own scale. Combination (compositional guidance, Liu et al. 2022, "Compositional
Visual Generation with Composable Diffusion Models", eq. 10, applied to velocities):

    v = v(c) + sum_k (s_k - 1) (v(c) - v(c without k))

one extra model call per guided condition; ``s_k = 1`` leaves condition ``k`` unguided. Guiding velocities
equals guiding x0 predictions at a fixed ``(x_t, t)`` (the conversion is affine in the prediction).

The conditioning object must offer ``without(names: frozenset[str]) -> same type`` returning the null
conditioning for those names (empty caption, silent audio, global reference only), exactly as dropped in
training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lpm.diffusion.samplers import Velocity

CONDITIONS = ("text", "audio_self", "audio_partner", "references")


@dataclass
class GuidanceSpec:
    """Which conditions are guided, and how strongly.

    Attributes:
        scales: condition name (one of ``CONDITIONS``) -> guidance scale; 1.0 (or absent) means no guidance.
    """

    scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scales) - set(CONDITIONS))
        if unknown:
            raise ValueError(f"unknown guidance condition(s) {unknown}; known: {', '.join(CONDITIONS)}")

    @property
    def guided(self) -> list[str]:
        """Conditions with a scale other than 1, in canonical order."""
        return [c for c in CONDITIONS if self.scales.get(c, 1.0) != 1.0]


def combine(v_cond: torch.Tensor, v_without: dict[str, torch.Tensor], scales: dict[str, float]) -> torch.Tensor:
    """``v(c) + sum_k (s_k - 1) (v(c) - v(c without k))``. All tensors share one shape."""
    out = v_cond
    for name, v_k in v_without.items():
        out = out + (scales[name] - 1.0) * (v_cond - v_k)
    return out


def guided(velocity: Velocity, spec: GuidanceSpec) -> Velocity:
    """Wrap a denoiser ``velocity(x_t, t, cond)`` with CFG by ``spec``; same signature, so samplers take it."""
    names = spec.guided

    def velocity_cfg(x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        v_cond = velocity(x_t, t, cond)
        if not names:
            return v_cond
        v_without = {k: velocity(x_t, t, cond.without(frozenset({k}))) for k in names}
        return combine(v_cond, v_without, spec.scales)

    return velocity_cfg
