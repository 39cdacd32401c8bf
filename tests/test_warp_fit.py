"""``reference_warp`` fitted on latents alone (lpm.training.warp_fit): frames that are the reference moved by a
known pose are explained by the fit, frames that are not are left to the residual, bad input is a clear error."""

from __future__ import annotations

import pytest
import torch

from lpm.models.reference_warp import AFFINE_GAIN, ReferenceWarp
from lpm.training.warp_fit import fit_reference_warp, warp_fit_data

CHANNELS = ("jaw_open", "head_pitch", "head_roll")


def test_the_fit_recovers_a_warp_that_made_the_frames():
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(6, 4, 16, 16), 3, 1, 1)  # image-like references
    truth = ReferenceWarp(CHANNELS, 16, 16)
    with torch.no_grad():
        truth.pose_to_affine[0, 1, 2] = 0.15 / AFFINE_GAIN  # pitch shifts the head
        truth.pose_to_affine[1, 0, 1] = 0.10 / AFFINE_GAIN  # roll rotates it
        truth.pose_to_affine[1, 1, 0] = -0.10 / AFFINE_GAIN
    tracks = torch.randn(6, 5, len(CHANNELS))
    with torch.no_grad():
        frames = truth(smooth, tracks)
    fit = fit_reference_warp(ReferenceWarp(CHANNELS, 16, 16), smooth, frames, tracks, steps=300, lr=3e-3)
    assert fit.relative_error < 0.1 and (fit.clips, fit.frames) == (6, 5)
    noise = torch.randn_like(frames)  # frames unrelated to the pose: nothing to explain
    unrelated = fit_reference_warp(ReferenceWarp(CHANNELS, 16, 16), smooth, smooth[:, None] + noise, tracks, steps=100)
    assert unrelated.relative_error > 0.9


def test_clips_without_motion_are_a_clear_error():
    with pytest.raises(ValueError, match="ground-truth motion"):
        warp_fit_data([], CHANNELS)
