"""The motion probe: a small CNN that reads the rig's motion channels and the emotion from one frame.

Every bench metric about motion (lip sync, silent mouth, reactions, states, emotion, pose) reads frames through
this probe, so its own accuracy on held-out identities and on the zero-shot style (``probe_accuracy``) is
reported beside every figure built on it. Its penultimate features also define the world-FID.

Targets: every channel of ``lpm.world.motion`` scaled by its range to [-1, 1], except ``body_yaw`` which wraps
at +-180 degrees and is regressed as (sin, cos); plus the emotion as a 5-way class (neutral when no ``emo_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpm.world.motion import EMOTIONS, MOTION_INDEX, MOTION_NAMES, MOTION_RANGE, NUM_MOTION

BODY_YAW = MOTION_INDEX["body_yaw"]
EMO_SLICE = slice(MOTION_INDEX["emo_happy"], MOTION_INDEX["emo_angry"] + 1)
# Channels regressed directly (scaled by range); body_yaw is replaced by its sin and cos.
LINEAR_CHANNELS: tuple[int, ...] = tuple(i for i in range(NUM_MOTION) if i != BODY_YAW)
NUM_TARGETS = len(LINEAR_CHANNELS) + 2
# An emo_* intensity below this counts as no emotion (neutral).
EMOTION_MIN = 0.05
_LO = np.array([MOTION_RANGE[n][0] for n in MOTION_NAMES], np.float32)
_HI = np.array([MOTION_RANGE[n][1] for n in MOTION_NAMES], np.float32)


@dataclass(frozen=True)
class ProbeConfig:
    """Shape of the probe network."""

    res: int = 96  # the head crop is resized to this (square); 96 keeps a 128 frame's pixels 1:1
    widths: tuple[int, ...] = (16, 32, 64, 96)  # channels per stage; each stage halves the resolution
    feature_dim: int = 128  # penultimate features: the world-FID space
    # Channels of a full-resolution stem (two 3x3 convs at stride 1) before the strided stages; 0 = none. Eyelids,
    # pupils and brows are a few pixels wide at 128x128: a stride-2 first layer averages them away.
    stem: int = 0


# The head crop, as fractions of the frame (top, bottom, left, right): every face channel lives there, and the
# shoulders at its lower edge show the body turn. Cropping instead of downsampling keeps mouth and eyelid pixels.
HEAD_CROP = (0.0, 0.75, 0.125, 0.875)


def head_crop(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 0.75 H, 0.75 W): the region of the frame the probe reads."""
    h, w = x.shape[-2:]
    top, bottom, left, right = HEAD_CROP
    return x[..., round(top * h): round(bottom * h), round(left * w): round(right * w)]


def to_unit(values: np.ndarray, index) -> np.ndarray:
    """Rig units -> [-1, 1] by the range of the channel(s) ``index`` (an int, index array or slice of
    MOTION_NAMES)."""
    return 2 * (values - _LO[index]) / (_HI[index] - _LO[index]) - 1


def from_unit(values: np.ndarray, index) -> np.ndarray:
    """``to_unit``'s inverse, clipped to the channel's range."""
    return _LO[index] + (np.clip(values, -1, 1) + 1) / 2 * (_HI[index] - _LO[index])


def encode_targets(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rig poses -> regression targets and emotion class.

    Args:
        poses: (N, NUM_MOTION) rig units.
    Returns:
        targets (N, NUM_TARGETS) float32 in [-1, 1]; emotion (N,) int64 index into EMOTIONS.
    """
    scaled = to_unit(poses, slice(None))  # (N, NUM_MOTION) in [-1, 1]
    yaw = np.deg2rad(poses[:, BODY_YAW])
    targets = np.concatenate([scaled[:, LINEAR_CHANNELS], np.sin(yaw)[:, None], np.cos(yaw)[:, None]], axis=1)
    emo = poses[:, EMO_SLICE]
    emotion = np.where(emo.max(axis=1) < EMOTION_MIN, 0, emo.argmax(axis=1) + 1)
    return targets.astype(np.float32), emotion.astype(np.int64)


def decode_targets(targets: np.ndarray) -> np.ndarray:
    """Regression outputs (N, NUM_TARGETS) -> rig poses (N, NUM_MOTION) in rig units (clipped to range)."""
    poses = np.zeros((targets.shape[0], NUM_MOTION), np.float32)
    idx = list(LINEAR_CHANNELS)
    poses[:, idx] = from_unit(targets[:, : len(LINEAR_CHANNELS)], idx)
    poses[:, BODY_YAW] = np.rad2deg(np.arctan2(targets[:, -2], targets[:, -1]))
    return poses


def conv_stage(c_in: int, c_out: int, double: bool = True) -> nn.Sequential:
    """Stride-2 conv (halves the resolution), then optionally a 3x3 conv; each with batch norm and ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if double:
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ProbeTrunk(nn.Module):
    """Frame -> features: the head crop at ``cfg.res``, the stem, the strided stages and the neck. The motion probe
    and the head pose reader (``lpm.eval.head``) put their own heads on it."""

    def __init__(self, cfg: ProbeConfig):
        super().__init__()
        self.cfg = cfg
        chans = (cfg.stem or 3, *cfg.widths)
        self.stem = nn.Identity()
        if cfg.stem:
            self.stem = nn.Sequential(
                nn.Conv2d(3, cfg.stem, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.stem), nn.ReLU(inplace=True),
                nn.Conv2d(cfg.stem, cfg.stem, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.stem),
                nn.ReLU(inplace=True))
        # Without a stem the first stage is a single conv (full-resolution convs cost most of the compute).
        self.stages = nn.Sequential(*[conv_stage(a, b, double=i > 0 or bool(cfg.stem))
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        side = cfg.res // 2 ** len(cfg.widths)
        # Flatten rather than pool: where the head, eyes and mouth are is itself the signal (pose, gaze).
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(cfg.widths[-1] * side * side, cfg.feature_dim),
                                  nn.ReLU(inplace=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) whole frames in [-1, 1] -> (B, feature_dim); the head crop is resized to cfg.res when
        needed."""
        x = head_crop(x)
        if x.shape[-1] != self.cfg.res or x.shape[-2] != self.cfg.res:
            x = F.interpolate(x, size=(self.cfg.res, self.cfg.res), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.neck(self.stages(self.stem(x)))


class MotionProbe(ProbeTrunk):
    """Frame -> (regression targets, emotion logits, features)."""

    def __init__(self, cfg: ProbeConfig = ProbeConfig()):
        super().__init__(cfg)
        self.regress = nn.Linear(cfg.feature_dim, NUM_TARGETS)
        self.emotion = nn.Linear(cfg.feature_dim, len(EMOTIONS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read frames.

        Args:
            x: (B, 3, H, W) whole frames, float in [-1, 1]; the head crop is resized to cfg.res when needed.
        Returns:
            targets (B, NUM_TARGETS), emotion logits (B, 5), features (B, feature_dim).
        """
        h = self.features(x)  # (B, feature_dim)
        return self.regress(h), self.emotion(h), h


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    frames = np.require(frames, requirements=["C", "W"])  # decoded video can be read-only; torch wants writable
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class ProbeTrack:
    """The probe's reading of a frame sequence.

    Attributes:
        motion: (F, NUM_MOTION) float32 in rig units.
        emotion_probs: (F, 5) float32 over EMOTIONS.
        features: (F, feature_dim) float32 (world-FID space).
    """

    motion: np.ndarray
    emotion_probs: np.ndarray
    features: np.ndarray

    def channel(self, name: str) -> np.ndarray:
        """(F,) one motion channel by name."""
        return self.motion[:, MOTION_INDEX[name]]

    @staticmethod
    def concat(tracks: list[ProbeTrack]) -> ProbeTrack:
        """Join tracks along time."""
        return ProbeTrack(*(np.concatenate([getattr(t, k) for t in tracks]) for k in
                            ("motion", "emotion_probs", "features")))


@torch.no_grad()
def read_frames(probe: MotionProbe, frames: np.ndarray, batch: int = 256) -> ProbeTrack:
    """Run the probe over frames.

    Args:
        frames: (F, H, W, 3) uint8.
    """
    probe.eval()
    outs, probs, feats = [], [], []
    for i in range(0, len(frames), batch):
        t, logits, h = probe(frames_to_tensor(frames[i: i + batch]))
        outs.append(t.numpy())
        probs.append(logits.softmax(-1).numpy())
        feats.append(h.numpy())
    if not outs:
        d = probe.cfg.feature_dim
        return ProbeTrack(np.zeros((0, NUM_MOTION), np.float32), np.zeros((0, len(EMOTIONS)), np.float32),
                          np.zeros((0, d), np.float32))
    return ProbeTrack(decode_targets(np.concatenate(outs)), np.concatenate(probs), np.concatenate(feats))


def channel_weights(targets: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """(NUM_TARGETS,) loss weights ``1 / std`` of each target over a training set, mean 1.

    Channels that rarely move (blinks, brows, gaze) then weigh as much as the jaw or the head turn: with equal
    weights a probe can leave them at their mean for a small loss."""
    w = 1.0 / np.maximum(targets.std(axis=0), floor)
    return (w / w.mean()).astype(np.float32)


def probe_loss(probe: MotionProbe, x: torch.Tensor, targets: torch.Tensor, emotion: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth-L1 on the scaled channels (``weights`` per channel, default equal) plus cross-entropy on the
    emotion."""
    pred, logits, _ = probe(x)
    per = F.smooth_l1_loss(pred, targets, beta=0.1, reduction="none")  # (B, NUM_TARGETS)
    reg = per.mean() if weights is None else (per * weights).mean()
    return reg + 0.5 * F.cross_entropy(logits, emotion)


@dataclass
class ChannelAccuracy:
    """How well one channel is read: mean absolute error (rig units) and Pearson r against the truth."""

    mae: float
    r: float


@dataclass
class ProbeAccuracy:
    """The probe's accuracy on one labelled set (held-out identities or the zero-shot style)."""

    split: str
    frames: int
    channels: dict[str, ChannelAccuracy] = field(default_factory=dict)
    emotion_acc: float = 0.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def probe_accuracy(probe: MotionProbe, frames: np.ndarray, poses: np.ndarray, split: str) -> ProbeAccuracy:
    """Per-channel MAE and r, and emotion accuracy, of the probe on labelled frames.

    Args:
        frames: (N, H, W, 3) uint8; poses: (N, NUM_MOTION) the true rig poses.
    """
    track = read_frames(probe, frames)
    _, emotion = encode_targets(poses)
    acc = ProbeAccuracy(split, len(frames), emotion_acc=float((track.emotion_probs.argmax(1) == emotion).mean()))
    for i, name in enumerate(MOTION_NAMES):
        err = track.motion[:, i] - poses[:, i]
        if i == BODY_YAW:
            err = (err + 180) % 360 - 180  # angles wrap
        acc.channels[name] = ChannelAccuracy(float(np.abs(err).mean()), _pearson(track.motion[:, i], poses[:, i]))
    return acc
