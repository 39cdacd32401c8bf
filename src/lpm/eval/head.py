"""The head pose reader: a CNN that reads the head's pitch, roll and yaw from one frame, in place of the probe's.

Nods are pitch dips of a few degrees and head tilts rolls of ~9 degrees, so listening is judged on how finely the
head pose is read. The motion probe reads it among 20 channels and the emotion through one 128-d bottleneck
(pitch / roll MAE 2.4 / 2.2 degrees on held-out identities, 3.8 / 2.8 on the zero-shot style, which it never saw);
this reader has the probe's shape but regresses the three head angles only, on every style (``head_all_styles``).
Its readings replace the probe's head channels (``merge_head``); the probe's features stay the world-FID space.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpm.eval.probe import ChannelAccuracy, ProbeConfig, ProbeTrack, ProbeTrunk, frames_to_tensor, from_unit, to_unit
from lpm.world.motion import MOTION_INDEX

HEAD_CHANNELS: tuple[str, ...] = ("head_pitch", "head_roll", "head_yaw")
_IDX = np.array([MOTION_INDEX[c] for c in HEAD_CHANNELS])


# The probe's shape with a full-resolution stem (``probe.ProbeConfig``).
HEAD_POSE_CONFIG = ProbeConfig(stem=16)


class HeadPoseReader(ProbeTrunk):
    """Frame -> the head's (pitch, roll, yaw), each scaled by its range to [-1, 1]: the probe's trunk with a head of
    its own."""

    def __init__(self, cfg: ProbeConfig = HEAD_POSE_CONFIG):
        super().__init__(cfg)
        self.regress = nn.Linear(cfg.feature_dim, len(HEAD_CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (B, 3, H, W) whole frames in [-1, 1]. Returns: (B, 3) pitch, roll, yaw in [-1, 1] units."""
        return self.regress(self.features(x))


def head_targets(poses: np.ndarray) -> np.ndarray:
    """Rig poses (N, NUM_MOTION) -> (N, 3) float32 targets: the head angles scaled by their ranges to [-1, 1]."""
    return to_unit(poses[:, _IDX], _IDX).astype(np.float32)


def head_loss(reader: HeadPoseReader, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 of the scaled angles (x (B, 3, H, W), targets (B, 3))."""
    return F.smooth_l1_loss(reader(x), targets, beta=0.1)


@torch.no_grad()
def read_head(reader: HeadPoseReader, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3) pitch, roll, yaw in degrees (clipped to each channel's range)."""
    reader.eval()
    out = [reader(frames_to_tensor(frames[i: i + batch])).numpy() for i in range(0, len(frames), batch)]
    if not out:
        return np.zeros((0, len(HEAD_CHANNELS)), np.float32)
    return from_unit(np.concatenate(out), _IDX).astype(np.float32)


def merge_head(track: ProbeTrack, head: np.ndarray) -> ProbeTrack:
    """The track with its head channels replaced by the head reader's (F, 3) reading."""
    if len(track.motion) != len(head):
        raise ValueError(f"merge_head: the track has {len(track.motion)} frames, the head reading {len(head)}")
    motion = track.motion.copy()
    motion[:, _IDX] = head
    return ProbeTrack(motion, track.emotion_probs, track.features)


def head_accuracy(reader: HeadPoseReader, frames: np.ndarray, poses: np.ndarray, split: str) -> dict:
    """Per angle, ``ChannelAccuracy`` (MAE in degrees, Pearson r) of the reader on labelled frames (a RenderSet's)."""
    from lpm.eval.metrics import pearson

    read = read_head(reader, frames)
    out: dict = {"split": split, "frames": len(frames), "channels": {}}
    for k, name in enumerate(HEAD_CHANNELS):
        true = poses[:, _IDX[k]]
        out["channels"][name] = dataclasses.asdict(ChannelAccuracy(float(np.abs(read[:, k] - true).mean()),
                                                                   pearson(read[:, k], true)))
    return out
