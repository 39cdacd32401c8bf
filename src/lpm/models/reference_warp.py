"""The global reference moved to each frame's head pose before ``reference_residual`` adds it.

A residual on the still reference is small only where the frame's head is where the reference's is: a nod or a
tilt of 10-15 degrees moves the face by a latent cell, and a regressed residual that must move it blurs the eyes
and the glasses (the Online model's smear). So the head-pose channels of the motion track (head yaw, pitch and
roll; the truth in training, the speech network's prediction at inference) drive an affine warp of the reference
latent, linear in the pose (a small rotation about a fixed pivot is ``I + angle * A``), and a learned map blends
the warped and the still reference per latent cell (the head follows its pose, the body and the background stay).

At init the warp is the identity (``A = 0``) whatever the mask, so a model gains the path unchanged; the mask
starts at 0.88 so the pose matrices get a gradient from the first step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_POSE = ("head_yaw", "head_pitch", "head_roll")
MASK_INIT_LOGIT = 2.0  # sigmoid(2) = 0.88 of each cell follows the head at init
# Parameter gains: Adam moves a parameter by about the learning rate per step, and the pose matrices need entries of
# ~0.1 (a shift of a latent cell per 10 degrees) within a few hundred steps at lr 3e-4, the mask logits a few units.
AFFINE_GAIN = 30.0
MASK_GAIN = 10.0


def pose_channels(motion_channels: tuple[str, ...], user: str = "reference_warp") -> list[int]:
    """Indices of the head-pose channels in the track, in ``HEAD_POSE`` order (a clear error naming ``user``, the
    option that needs them, when it has none)."""
    found = [motion_channels.index(c) for c in HEAD_POSE if c in motion_channels]
    if not found:
        raise ValueError(f"{user} needs head-pose channels ({', '.join(HEAD_POSE)}) in motion_channels, "
                         f"got {motion_channels}")
    return found


class ReferenceWarp(nn.Module):
    """``(reference (B, C, h, w), track (B, F, P))`` -> the reference at each frame's head pose ``(B, F, C, h, w)``.

    Args:
        motion_channels: the track's channel names (the head-pose ones drive the warp).
        height, width: the latent's size (the blend map's).
    """

    def __init__(self, motion_channels: tuple[str, ...], height: int, width: int) -> None:
        super().__init__()
        self.register_buffer("channels", torch.tensor(pose_channels(motion_channels)), persistent=False)
        self.pose_to_affine = nn.Parameter(torch.zeros(len(self.channels), 2, 3))  # per pose channel, A_k / gain
        self.mask_logit = nn.Parameter(torch.full((height, width), MASK_INIT_LOGIT / MASK_GAIN))

    def forward(self, reference: torch.Tensor, track: torch.Tensor) -> torch.Tensor:
        """``reference (B, C, h, w)`` or one per frame ``(B, F, C, h, w)``, ``track (B, F, P)``."""
        f = track.shape[1]
        if reference.dim() == 4:
            reference = reference[:, None].expand(-1, f, -1, -1, -1)
        b, _, c, h, w = reference.shape
        pose = track[..., self.channels].to(self.pose_to_affine.dtype)  # (B, F, K)
        theta = torch.eye(2, 3, dtype=pose.dtype, device=pose.device) + torch.einsum(
            "bfk,kij->bfij", pose, self.pose_to_affine * AFFINE_GAIN)  # (B, F, 2, 3)
        grid = F.affine_grid(theta.flatten(0, 1), [b * f, c, h, w], align_corners=False)
        frames = reference.to(pose.dtype).flatten(0, 1)
        warped = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
        m = torch.sigmoid(self.mask_logit * MASK_GAIN)  # (h, w)
        out = m * warped.unflatten(0, (b, f)) + (1 - m) * reference.to(pose.dtype)
        return out.to(reference.dtype)
