"""Start ``reference_warp`` from the data: its pose matrices and blend map fitted by least squares on latents.

Trained with the DiT from zero, the warp's eighteen pose coefficients get a gradient that the residual head
mostly absorbs: in 150 steps they wandered at |a| ~0.03 with no rotation structure. Fitted alone on the training
clips' latents (the reference, warped by each frame's true head pose, against the frame), they take the shape of
a rotation about the neck for roll and a shift with foreshortening for pitch within a few hundred Adam steps of
a network of 800 parameters, which costs seconds. The DiT's training then starts from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lpm.models.motion_track import to_track
from lpm.models.reference_warp import ReferenceWarp
from lpm.training.latent_cache import CachedClip
from lpm.world.motion import MOTION_NAMES


@dataclass(frozen=True)
class WarpFit:
    """What the fit reached: the mean squared error of the warped reference against the frames, relative to the
    still reference's (1 = no better), on the clips it was fitted on."""

    relative_error: float
    clips: int
    frames: int


def warp_fit_data(clips: list[CachedClip], channels: tuple[str, ...], max_clips: int = 96, every: int = 4,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(references (N, C, h, w), frames (N, F, C, h, w), tracks (N, F, P))`` of up to ``max_clips`` clips with
    motion and a global reference, every ``every``-th frame, cut to the shortest clip."""
    usable = [c for c in clips if c.motion is not None and "global" in c.references]
    if not usable:
        raise ValueError("fitting reference_warp needs clips with ground-truth motion and a global reference")
    pick = np.random.default_rng(seed).permutation(len(usable))[:max_clips]
    chosen = [usable[i] for i in sorted(pick)]
    frames = min(c.latents.shape[0] for c in chosen) // every * every
    refs = torch.stack([c.references["global"].float() for c in chosen])
    x = torch.stack([c.latents[:frames:every].float() for c in chosen])
    tracks = torch.stack([to_track(c.motion[:frames:every], MOTION_NAMES, channels) for c in chosen])
    return refs, x, tracks


def fit_reference_warp(warp: ReferenceWarp, refs: torch.Tensor, frames: torch.Tensor, tracks: torch.Tensor,
                       steps: int = 300, lr: float = 3e-3) -> WarpFit:
    """Fit ``warp`` in place: minimise ``|warp(ref, track) - frame|^2`` over the given clips (Adam, full batch).

    Args:
        refs: ``(N, C, h, w)``; frames: ``(N, F, C, h, w)``; tracks: ``(N, F, P)`` the warp's track channels.
    """
    still = (frames - refs[:, None]).square().mean()
    opt = torch.optim.Adam(warp.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (warp(refs, tracks) - frames).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        final = (warp(refs, tracks) - frames).square().mean()
    return WarpFit(relative_error=float(final / still), clips=len(refs), frames=int(frames.shape[1]))
