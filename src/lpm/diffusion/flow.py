"""Flow matching: the rectified-flow path, the timestep shift, and the training loss.

Convention (shared with ``lpm.models.dit``): flow time ``t`` in [0, 1], ``t = 0`` clean data, ``t = 1`` noise.

- Path (Rectified Flow, Liu et al. 2022; SD3, Esser et al. 2024, eq. 3): ``x_t = (1 - t) x_0 + t eps``.
- Velocity target: ``v = d x_t / d t = eps - x_0``; sampling integrates ``dx/dt = v`` from ``t = 1`` to ``0``.
- Timestep shift (SD3 Sec. 5.3.2, Wan2.1 ``sample_shift``): ``t' = s t / (1 + (s - 1) t)``; ``s > 1`` moves
  training and sampling time toward noise, which larger latents (more redundant pixels) need.
- Parametrisation: the network predicts the velocity, or the clean latent ``x_0`` which is converted to a
  velocity ``v = (x_t - x_0) / t`` before the loss ("Back to Basics: Let Denoising Generative Models Denoise",
  Li & He 2025: x-prediction with a v-loss; ARCHITECTURE.md: it helped at CPU scale with large patches).
- Loss: per-element squared error on the velocity (or on x0, ``FlowConfig.loss_space``), weighted by an optional
  per-position map (mouth and eyes up-weighted, ``lpm.training.face_weights``), normalised per sample, averaged
  over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lpm.config import ConfigError

PARAMETRISATIONS = ("velocity", "x0")
LOSS_SPACES = ("velocity", "x0")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 / Wan2.1 timestep shift ``t' = s t / (1 + (s - 1) t)``: monotone, fixes 0 and 1."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class FlowConfig:
    """The flow-matching objective; saved with the Base run."""

    # What the network outputs: "velocity" (eps - x_0) or "x0" (the clean latent, converted to velocity).
    parametrisation: str = "x0"
    # Timestep shift s applied to sampled training times (SD3 / Wan2.1; 1 = none).
    shift: float = 3.0
    # Distribution of training times before the shift: "uniform" or "logit_normal" (SD3's choice).
    time_sampling: str = "uniform"
    # Mean and std of the logit-normal time distribution.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # Smallest t in the x0 -> velocity conversion (1 / t explodes at clean data; Li & He 2025 clip it too).
    min_time_x0: float = 0.05
    # Where the squared error is taken: "velocity" (weights the x0 error by 1 / t^2: up to 400x at small t, where
    # the mouth is visible in x_t and audio cannot help) or "x0" (weight 1 at every t; ARCHITECTURE.md,
    # "Learnability": it tripled the mouth's audio gap at high t).
    loss_space: str = "velocity"

    def __post_init__(self) -> None:
        if self.parametrisation not in PARAMETRISATIONS:
            raise ConfigError(f"parametrisation must be one of {PARAMETRISATIONS}, got {self.parametrisation!r}")
        if self.loss_space not in LOSS_SPACES:
            raise ConfigError(f"loss_space must be one of {LOSS_SPACES}, got {self.loss_space!r}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}")
        if self.shift <= 0:
            raise ConfigError(f"shift must be > 0, got {self.shift}")


@dataclass
class Batch:
    """One training batch of the objective; ``cond`` is passed to the model untouched.

    Attributes:
        x_0: ``(B, F, C, h, w)`` clean latents.
        cond: whatever the model takes as conditioning (``lpm.training.conditioned.ConditionBatch``).
        weights: ``(B, F, h, w)`` loss weights per latent position, or None (uniform).
        t: ``(B,)`` flow times, or None to draw them in ``loss`` (given when ranks must agree).
        noise: like ``x_0``, or None to draw it in ``loss``.
    """

    x_0: torch.Tensor
    cond: Any
    weights: torch.Tensor | None = None
    t: torch.Tensor | None = None
    noise: torch.Tensor | None = None


@dataclass
class PathSample:
    """A point on the path: ``x_t (B, F, C, h, w)``, ``t (B,)``, and the velocity ``target`` at it."""

    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor


@dataclass
class LossOutput:
    """``loss`` (scalar, the batch mean), ``per_sample (B,)`` and the ``path`` it was computed on."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    path: PathSample


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, 1, ...)`` broadcasting against ``like``."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


class FlowMatching:
    """The flow-matching objective (the model only predicts; this owns the maths).

    Args:
        cfg: the objective's settings.
    """

    def __init__(self, cfg: FlowConfig | None = None) -> None:
        self.cfg = cfg or FlowConfig()

    # ---- the path ----
    @staticmethod
    def path(x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> PathSample:
        """Rectified-flow interpolation ``x_t = (1 - t) x_0 + t eps`` and velocity ``eps - x_0``.

        Args:
            x_0, noise: ``(B, F, C, h, w)``. t: ``(B,)``.
        """
        tb = _expand(t, x_0)
        return PathSample(x_t=(1 - tb) * x_0 + tb * noise, t=t, target=noise - x_0)

    def sample_time(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training times ``(B,)``: uniform or logit-normal, then shifted."""
        cfg = self.cfg
        if cfg.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=device)
        else:
            z = torch.randn(batch, generator=generator, device=device)
            t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
        return shift_time(t, cfg.shift)

    # ---- parametrisation ----
    def velocity(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output as a velocity. ``output, x_t (B, F, C, h, w)``, ``t (B,)``."""
        if self.cfg.parametrisation == "velocity":
            return output
        # x_t = (1 - t) x_0 + t eps  =>  v = eps - x_0 = (x_t - x_0) / t.
        tb = _expand(t, x_t).clamp(min=self.cfg.min_time_x0)
        return (x_t - output) / tb

    def x0(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output as a clean-sample prediction. ``output, x_t (B, F, C, h, w)``, ``t (B,)`` or
        ``(B, F)`` (one time per frame, as the Online model's chunks carry)."""
        if self.cfg.parametrisation == "x0":
            return output
        tb = t.reshape(*t.shape, *([1] * (x_t.dim() - t.dim())))
        return x_t - tb * output  # x_0 = x_t - t v on the straight path

    def denoiser(self, model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """Wrap ``model(x_t, t, cond) -> output`` as ``(x_t, t, cond) -> velocity`` for the samplers."""

        def velocity_fn(x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            return self.velocity(model(x_t, t, cond).float(), x_t, t)

        return velocity_fn

    # ---- the loss ----
    def loss(self, model: Callable[..., torch.Tensor], batch: Batch,
             generator: torch.Generator | None = None) -> LossOutput:
        """Weighted MSE of ``model(x_t, t, cond)`` in velocity or x0 space (``FlowConfig.loss_space``).

        Args:
            model: ``(x_t (B, F, C, h, w), t (B,), cond) -> (B, F, C, h, w)`` in the configured parametrisation.
            batch: clean latents, conditioning, optional weights / times / noise.
            generator: RNG for the times and noise not given in the batch.
        """
        x_0 = batch.x_0
        b = x_0.shape[0]
        t = batch.t if batch.t is not None else self.sample_time(b, generator, x_0.device)
        noise = batch.noise
        if noise is None:
            noise = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
        path = self.path(x_0, t.to(x_0), noise)
        output = model(path.x_t, path.t, batch.cond).float()
        if self.cfg.loss_space == "x0":
            err = (self.x0(output, path.x_t, path.t) - x_0.float()).square().mean(2)  # (B, F, h, w)
        else:
            v = self.velocity(output, path.x_t, path.t)
            err = (v - path.target).square().mean(2)  # (B, F, h, w): mean over channels
        if batch.weights is None:
            per_sample = err.flatten(1).mean(1)
        else:
            w = batch.weights.to(err)
            per_sample = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)  # weighted mean per sample
        return LossOutput(loss=per_sample.mean(), per_sample=per_sample, path=path)
