"""Training-time instruments that can see whether the DiT uses its audio (ARCHITECTURE.md, "Learnability").

Each check is the relative rise of a region's x0 error on a fixed batch when one input is swapped between the
batch's windows (``roll`` by one), in eval mode (no dropout, so the two passes differ only by the swap), at
fixed high flow times (0.7-0.95: where the mouth is hidden in x_t and only the conditioning can tell it) and
fixed noise:

- ``gap_own_audio``: speaking windows, mouth-only weights, own voices swapped, the motion track predicted from
  the audio (the inference path). The lip-sync check.
- ``gap_track``: the same windows and weights, the *true* motion tracks swapped: does the DiT render its track?
- ``gap_partner_audio``: listening windows, whole-frame weights, partner voices swapped, track predicted: do
  partner cues move the head?

A check is exactly 0 when every window carries the same input (tested), so a value above its noise means use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lpm.diffusion.flow import Batch, FlowMatching
from lpm.training.base_batches import Window, WindowSampler
from lpm.training.conditioned import ConditionBatch
from lpm.training.latent_cache import CachedClip

CHECK_TIMES = (0.7, 0.85, 0.95)
CHECK_SEED = 7177  # the fixed windows and noise of every check (and of ``BaseTrainer.audio_gain``)
SPEAKING_MODES = ("speak", "conversation")
LISTENING_MODES = ("listen", "conversation")


@dataclass
class GapCheck:
    """One check: a fixed batch, the region weights ``(B, F, h, w)`` and the swap applied to its conditioning."""

    name: str
    batch: Batch
    weights: torch.Tensor
    swap: Callable[[ConditionBatch], ConditionBatch]
    predicted_track: bool  # True: the DiT predicts the track from audio (motion=None); False: the true track


@torch.no_grad()
def x0_error(model: torch.nn.Module, flow: FlowMatching, batch: Batch, cond: ConditionBatch, weights: torch.Tensor,
             t: float) -> float:
    """Weighted mean squared x0 error of ``model`` on ``batch`` (its noise) at flow time ``t``."""
    x_0 = batch.x_0
    ts = torch.full((x_0.shape[0],), t, device=x_0.device)
    path = flow.path(x_0, ts, batch.noise)
    x0_hat = flow.x0(model(path.x_t, ts, cond).float(), path.x_t, ts)
    err = (x0_hat - x_0).square().mean(2)  # (B, F, h, w)
    return float((err * weights).sum() / weights.sum().clamp(min=1e-12))


@torch.no_grad()
def gap(model: torch.nn.Module, flow: FlowMatching, check: GapCheck, times: tuple[float, ...] = CHECK_TIMES) -> float:
    """(error with the swap - error without) / error without, summed over ``times``; the model in eval mode."""
    was_training = model.training
    model.eval()
    cond = check.batch.cond
    if check.predicted_track:
        cond = dataclasses.replace(cond, motion=None, motion_from_audio=None)
    swapped = check.swap(cond)
    right = sum(x0_error(model, flow, check.batch, cond, check.weights, t) for t in times)
    wrong = sum(x0_error(model, flow, check.batch, swapped, check.weights, t) for t in times)
    model.train(was_training)
    return (wrong - right) / max(right, 1e-12)


def fixed_batch(sampler: WindowSampler, clips: list[CachedClip], modes: tuple[str, ...], windows: int,
                 seed: int) -> tuple[Batch, list[Window]]:
    """A fixed batch of ``windows`` windows of clips in ``modes`` (no CFG dropout), with fixed noise."""
    pool = [c for c in clips if c.mode in modes] or clips
    rng = np.random.default_rng([seed, CHECK_SEED])
    picked = [pool[int(rng.integers(len(pool)))] for _ in range(windows)]
    drawn = [Window(c, int(rng.integers(0, c.frames - sampler.frames + 1))) for c in picked]
    batch = sampler.assemble(drawn)
    batch.noise = torch.randn(batch.x_0.shape, generator=torch.Generator().manual_seed(CHECK_SEED))
    return batch, drawn


def _mouth_weights(windows: list[Window], frames: int, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, F, h, w)`` mouth-only coverage of the windows (ones for a clip without a map)."""
    return torch.stack([w.clip.mouth[w.start:w.start + frames].float() if w.clip.mouth is not None
                        else torch.ones(frames, *shape) for w in windows])


def audio_checks(sampler: WindowSampler, clips: list[CachedClip], seed: int, windows: int = 8) -> list[GapCheck]:
    """The checks of a run (see the module docstring), on fixed windows of ``clips``."""
    speak, speak_windows = fixed_batch(sampler, clips, SPEAKING_MODES, windows, seed)
    listen, _ = fixed_batch(sampler, clips, LISTENING_MODES, windows, seed + 1)
    mouth = _mouth_weights(speak_windows, sampler.frames, tuple(speak.x_0.shape[-2:]))
    checks = [
        GapCheck("gap_own_audio", speak, mouth,
                 lambda c: dataclasses.replace(c, mel_self=c.mel_self.roll(1, 0)), predicted_track=True),
        GapCheck("gap_partner_audio", listen, torch.ones(listen.x_0.shape[:2] + listen.x_0.shape[-2:]),
                 lambda c: dataclasses.replace(c, mel_partner=c.mel_partner.roll(1, 0)), predicted_track=True),
    ]
    if speak.cond.motion is not None:
        checks.append(GapCheck("gap_track", speak, mouth,
                               lambda c: dataclasses.replace(c, motion=c.motion.roll(1, 0)), predicted_track=False))
    return checks
