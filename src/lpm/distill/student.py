"""The causal student: its few denoising times, its training inputs, and its autoregressive rollout.

The Online model generates a stream chunk by chunk (``frames_per_chunk`` latent frames). For each chunk it
starts from noise at ``t = 1`` and takes ``len(times) - 1`` steps of the renoising sampler
(``lpm.diffusion.samplers.sample_renoise``): predict the clean chunk, re-noise it with fresh noise to the
next time. The clean chunk is then committed to the KV cache by one forward at ``t = 0`` (CausVid), so later
chunks attend to clean context.

Two ways of running the student share that contract:

- ``causal_inputs`` (ODE regression): one block-causal forward over a window where the chunks before a chosen
  chunk ``j`` are clean at ``t = 0`` and chunk ``j`` is at one of the student's times. Block-causal attention
  gives chunk ``j`` exactly the context a cached stream gives it (``DiT`` tests: cached == full causal), and the
  chunks after ``j`` cannot influence it, so they are left out of the loss.
- ``rollout`` (DMD, Self-Forcing): the real streaming loop with the KV cache, on the student's own outputs.
  One denoising step per rollout (drawn at random, the same for every chunk) carries gradients; the others
  and the cache commits run without (Self-Forcing's truncation: the cache holds detached keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lpm.diffusion.flow import FlowMatching
from lpm.diffusion.samplers import flow_timesteps
from lpm.models.dit_config import DiTConfig
from lpm.models.kv_cache import KVCache
from lpm.training.conditioned import ConditionBatch, ConditionedDiT


def face_weighted_error(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the squared error of ``pred`` against ``target`` (both ``(B, F, C, h, w)``) under the face
    weights ``(B, F, h, w)`` (``Batch.weights``), normalised per sample. The students' regression onto data."""
    err = (pred - target).square().mean(2)  # (B, F, h, w)
    return (err * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-12)


def student_times(steps: int, shift: float) -> list[float]:
    """The Online model's denoising times: ``steps + 1`` values from 1 to 0 on the shifted grid."""
    return [float(t) for t in flow_timesteps(steps, shift)]


def teacher_grid(student: list[float], per_step: int, shift: float) -> tuple[torch.Tensor, list[int]]:
    """A teacher ODE grid that refines the student's: ``per_step`` teacher steps per student step.

    Returns:
        ``(times (N + 1,), index)`` with ``times[index[i]] == student[i]``. The shifted uniform grid of
        ``S * per_step`` steps contains the one of ``S`` steps, since the shift is applied pointwise.
    """
    steps = len(student) - 1
    times = flow_timesteps(steps * per_step, shift)
    index = [i * per_step for i in range(steps + 1)]
    if not torch.allclose(times[index], torch.tensor(student), atol=1e-6):
        raise ValueError(f"student times {student} are not on the shifted grid of {steps} steps (shift {shift})")
    return times, index


@dataclass
class CausalInputs:
    """One ODE-regression forward: inputs, per-frame times, and which frames the loss reads.

    Attributes:
        x_t: ``(B, F, C, h, w)``; chunks before ``chunk[b]`` hold the clean target, chunk ``chunk[b]`` and
            later hold the trajectory state at ``t[b, chunk frames]``.
        t: ``(B, F)`` per-frame flow time (0 before the chosen chunk).
        loss_mask: ``(B, F)`` 1 on the chosen chunk's frames.
    """

    x_t: torch.Tensor
    t: torch.Tensor
    loss_mask: torch.Tensor


def causal_inputs(states: torch.Tensor, x_0: torch.Tensor, times: list[float], chunk: torch.Tensor,
                  step: torch.Tensor, frames_per_chunk: int) -> CausalInputs:
    """Build the block-causal regression input of a batch of teacher trajectories.

    Args:
        states: ``(B, S, F, C, h, w)`` the trajectory at the student's times ``times[:S]`` (noise first).
        x_0: ``(B, F, C, h, w)`` the trajectory's end (the target).
        times: the student's times (``S + 1`` values, last 0).
        chunk: ``(B,)`` the chunk each sample is trained on. step: ``(B,)`` its student step.
    """
    b, _, f = states.shape[:3]
    frame_chunk = torch.arange(f, device=x_0.device) // frames_per_chunk  # (F,)
    before = frame_chunk[None] < chunk[:, None]  # (B, F)
    noisy = states[torch.arange(b), step]  # (B, F, C, h, w)
    x_t = torch.where(before[..., None, None, None], x_0, noisy)
    t_step = torch.tensor(times, device=x_0.device, dtype=x_0.dtype)[step]  # (B,)
    t = torch.where(before, torch.zeros((), dtype=x_0.dtype, device=x_0.device), t_step[:, None])
    return CausalInputs(x_t=x_t, t=t, loss_mask=(frame_chunk[None] == chunk[:, None]).to(x_0.dtype))


@dataclass
class Rollout:
    """A student rollout: ``video (B, F, C, h, w)`` (the gradient-carrying predictions) and ``exit_step``."""

    video: torch.Tensor
    exit_step: int


def rollout(model: ConditionedDiT, flow: FlowMatching, cond: ConditionBatch, shape: tuple[int, ...],
            times: list[float], noise: torch.Tensor, renoise: torch.Tensor, exit_step: int | None,
            cfg: DiTConfig) -> Rollout:
    """Generate a window chunk by chunk through the KV cache, as the Online model streams.

    Args:
        cond: the window's conditioning; its ``audio_start_frame`` is relative to the window's first frame,
            which is the stream's frame 0.
        shape: ``(B, F, C, h, w)``, ``F`` a multiple of ``frames_per_chunk``.
        noise: like ``shape``, the starting noise. renoise: ``(S - 1, *shape)`` fresh noise of the later steps.
        exit_step: the denoising step whose prediction is the chunk's output and carries gradients (None: the
            last step, no gradients at all, i.e. inference).
    """
    b, f = shape[:2]
    fpc = cfg.frames_per_chunk
    steps = len(times) - 1
    last = steps - 1 if exit_step is None else exit_step
    device = noise.device
    cache = KVCache.empty(cfg, b, device, noise.dtype)
    chunks = []
    for c in range(f // fpc):
        frames = slice(c * fpc, (c + 1) * fpc)
        x = noise[:, frames]
        for i in range(last + 1):
            t = torch.full((b,), times[i], device=device, dtype=x.dtype)
            grad = exit_step is not None and i == last and torch.is_grad_enabled()
            with torch.set_grad_enabled(grad):
                x_0 = flow.x0(model(x, t, cond, cache=cache).float(), x, t)
            if i < last:
                x = (1 - times[i + 1]) * x_0.detach() + times[i + 1] * renoise[i, :, frames]
        with torch.no_grad():  # commit the clean chunk: the cache holds detached keys
            model(x_0.detach(), torch.zeros(b, device=device), cond, cache=cache, update_cache=True)
        chunks.append(x_0)
    return Rollout(video=torch.cat(chunks, 1), exit_step=last)
