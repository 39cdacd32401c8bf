"""ODE samplers over the flow (k-diffusion style: stateless functions with one shared signature).

Every sampler is ``sample_x(velocity, x, timesteps, cond=None, callback=None) -> x_0`` where
``velocity(x_t, t (B,), cond) -> v`` is the denoiser (``FlowMatching.denoiser`` or a CFG wrapper),
``x (B, ...)`` is pure noise at ``timesteps[0] = 1`` and ``timesteps`` decreases to 0. They integrate
``dx/dt = v`` (Rectified Flow, Liu et al. 2022) backwards in time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lpm.diffusion.flow import shift_time

Velocity = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def flow_timesteps(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """``steps + 1`` times from 1 to 0: a uniform grid through the SD3 / Wan2.1 shift (denser near noise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift).float()


def _times(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.device, x.dtype).expand(x.shape[0])  # (B,)


@torch.no_grad()
def sample_euler(velocity: Velocity, x: torch.Tensor, timesteps: torch.Tensor, cond: Any = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """Euler's method: ``x <- x + (t_next - t) v(x, t)``. Exact when ``v`` is constant along the path.

    Args:
        velocity: the denoiser. x: ``(B, ...)`` at ``timesteps[0]``. timesteps: ``(N + 1,)`` decreasing.
        cond: passed to ``velocity``. callback: ``(i, x, t)`` after every step.
    """
    for i in range(len(timesteps) - 1):
        t, t_next = timesteps[i], timesteps[i + 1]
        x = x + (t_next - t) * velocity(x, _times(t, x), cond)
        if callback is not None:
            callback(i, x, t_next)
    return x


@torch.no_grad()
def sample_heun(velocity: Velocity, x: torch.Tensor, timesteps: torch.Tensor, cond: Any = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Heun's method (EDM, Karras et al. 2022, Alg. 1): an Euler predictor and a trapezoidal corrector;
    second order, two model calls per step. The final step to ``t = 0`` is the corrected one too (a velocity
    is defined at clean data; an x0-parametrised model clamps ``t`` in its conversion)."""
    for i in range(len(timesteps) - 1):
        t, t_next = timesteps[i], timesteps[i + 1]
        dt = t_next - t
        v = velocity(x, _times(t, x), cond)
        x_pred = x + dt * v
        v_next = velocity(x_pred, _times(t_next, x), cond)
        x = x + dt * 0.5 * (v + v_next)
        if callback is not None:
            callback(i, x, t_next)
    return x


@torch.no_grad()
def sample_renoise(velocity: Velocity, x: torch.Tensor, timesteps: torch.Tensor, cond: Any = None,
                   callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The few-step sampler of distilled students (DMD2, CausVid, Self-Forcing): predict the clean sample
    ``x_0 = x_t - t v`` at each time, then move to the next time along the forward process with *fresh*
    noise, ``x_next = (1 - t_next) x_0 + t_next eps``. A student trained on forward-noised inputs (ODE
    regression, DMD on its own rollouts) sees inputs of the same distribution as in training; the last step
    (``t_next = 0``) returns the prediction itself.

    Args:
        generator: RNG of the fresh noise (None: torch's global RNG).
    """
    for i in range(len(timesteps) - 1):
        t, t_next = timesteps[i], timesteps[i + 1]
        x_0 = x - t * velocity(x, _times(t, x), cond)
        if float(t_next) > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = (1 - t_next) * x_0 + t_next * eps
        else:
            x = x_0
        if callback is not None:
            callback(i, x, t_next)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "heun": sample_heun,
                                                     "renoise": sample_renoise}
