"""The eye reader: blinks, gaze and brows read from a close crop of each eye, found by a locator.

The motion probe reads the whole head crop at 96 px; an eyelid, a pupil or a brow moves 30-250 pixels of a
128x128 frame, and the probe's r for them stayed at 0.2-0.6 on the truth render: it sees them but cannot place
them. This reader works in two stages:

1. ``EyeLocator``: the head crop (``probe.head_crop``) -> the centre of each eye in frame coordinates and whether
   it faces the viewer (an eye on the far side of a turned head has no pixels to read).
2. ``EyePatchNet``: a patch around each eye (``EyeReaderConfig.patch_w`` x ``patch_h`` of the frame, shifted up
   to take in the brow, resampled to ``patch_res``), the right eye mirrored so both look alike -> per eye the
   eyelid (blink), the gaze, the brow and, as auxiliary outputs that help separate them, the four emotions (a
   surprised face raises the brows and widens the eyes, an angry one lowers them, a happy one squints).

``read_eyes`` gives the five channels (blink_l, blink_r, gaze_x, gaze_y, brow_raise) and the eyes' visibility per
frame; ``merge_eyes`` puts them into a ``ProbeTrack`` where an eye is visible. Trained by ``lpm eval train-eyes``
on the same labelled renders as the probe (``lpm.eval.renders``, whose sets carry each frame's eye boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpm.eval.probe import (
    _HI,
    _LO,
    ChannelAccuracy,
    ProbeTrack,
    _pearson,
    conv_stage,
    frames_to_tensor,
    head_crop,
)
from lpm.world.motion import MOTION_INDEX

# Per-eye outputs of the patch net, in order; the first four are read, the emotions only help training.
EYE_OUTPUTS: tuple[str, ...] = ("blink", "gaze_x", "gaze_y", "brow_raise",
                                "emo_happy", "emo_sad", "emo_surprised", "emo_angry")
NUM_EYE_OUTPUTS = len(EYE_OUTPUTS)
# The motion channels the reader provides (merged into the probe's track).
EYE_CHANNELS: tuple[str, ...] = ("blink_l", "blink_r", "gaze_x", "gaze_y", "brow_raise")
# Which eye is which in ``RenderSet.eyes`` and in the reader's outputs: 0 = the character's left eye ("eye_l",
# on the viewer's right), 1 = its right eye (mirrored before reading, so gaze_x flips sign for it).
EYE_SIDES = ("l", "r")


@dataclass(frozen=True)
class EyeReaderConfig:
    """Shape of both stages. Patch sizes are fractions of the frame width/height, so any resolution reads alike."""

    locator_res: int = 96  # the head crop (96 px of a 128 frame) is resized to this
    locator_widths: tuple[int, ...] = (16, 32, 64, 96)  # stride-2 stages
    patch_w: float = 0.1875  # 24 px of a 128 frame: the eye with its corners
    patch_h: float = 0.25  # 32 px: the eye and the brow above it
    patch_up: float = 0.047  # the patch centre sits this far above the eye centre (6 px of 128): the brow
    patch_res: tuple[int, int] = (40, 30)  # (height, width) the patch is resampled to
    patch_widths: tuple[int, ...] = (32, 32, 64, 64, 96, 96, 128)
    patch_strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 2)
    hidden: int = 128


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class EyeLocator(nn.Module):
    """Frame -> eye centres (B, 2, 2) as (x, y) in [-1, 1] frame coordinates (align_corners=False) and visibility
    logits (B, 2), eyes in ``EYE_SIDES`` order."""

    def __init__(self, cfg: EyeReaderConfig):
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.locator_widths)
        self.stages = nn.Sequential(*[conv_stage(a, b, double=i > 0)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        side = cfg.locator_res // 2 ** len(cfg.locator_widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.locator_widths[-1] * side * side, cfg.hidden),
                                  nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) whole frames in [-1, 1]."""
        crop = head_crop(x)
        res = self.cfg.locator_res
        if crop.shape[-2:] != (res, res):
            crop = F.interpolate(crop, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        out = self.head(self.stages(crop))  # (B, 6)
        return out[:, :4].view(-1, 2, 2), out[:, 4:]


class EyePatchNet(nn.Module):
    """Eye patches (B, 3, patch_res) -> (B, NUM_EYE_OUTPUTS), scaled like ``eye_targets``."""

    def __init__(self, cfg: EyeReaderConfig):
        super().__init__()
        chans = (3, *cfg.patch_widths)
        self.convs = nn.Sequential(*[_conv(a, b, s) for a, b, s in zip(chans[:-1], chans[1:], cfg.patch_strides)])
        h, w = cfg.patch_res
        for s in cfg.patch_strides:
            h, w = -(-h // s), -(-w // s)
        # Flatten, not pool: where the pupil sits in the patch is the gaze.
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.patch_widths[-1] * h * w, cfg.hidden),
                                  nn.ReLU(inplace=True), nn.Linear(cfg.hidden, NUM_EYE_OUTPUTS))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(patches))


def eye_patches(x: torch.Tensor, centres: torch.Tensor, cfg: EyeReaderConfig) -> torch.Tensor:
    """Cut both eyes' patches out of frames.

    Args:
        x: (B, 3, H, W) frames; centres: (B, 2, 2) eye centres (x, y) in [-1, 1] frame coordinates.
    Returns:
        (B * 2, 3, *cfg.patch_res): eye 0 then eye 1 of each frame; eye 1 mirrored left-right.
    """
    b = x.shape[0]
    c = centres.reshape(b * 2, 2)
    sx = torch.full((b, 2), cfg.patch_w, dtype=x.dtype)
    sx[:, 1] = -cfg.patch_w  # mirror the second eye
    theta = torch.zeros(b * 2, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = sx.reshape(-1)
    theta[:, 1, 1] = cfg.patch_h
    theta[:, 0, 2] = c[:, 0]
    theta[:, 1, 2] = c[:, 1] - 2 * cfg.patch_up
    grid = F.affine_grid(theta, [b * 2, 3, *cfg.patch_res], align_corners=False)
    frames = x.repeat_interleave(2, dim=0)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


class EyeReader(nn.Module):
    """Both stages: frames -> per-eye outputs (B, 2, NUM_EYE_OUTPUTS), centres (B, 2, 2), visibility logits (B, 2)."""

    def __init__(self, cfg: EyeReaderConfig = EyeReaderConfig()):
        super().__init__()
        self.cfg = cfg
        self.locator = EyeLocator(cfg)
        self.patch = EyePatchNet(cfg)

    def read_at(self, x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) frames, (B, 2, 2) centres -> (B, 2, NUM_EYE_OUTPUTS)."""
        return self.patch(eye_patches(x, centres, self.cfg)).view(x.shape[0], 2, NUM_EYE_OUTPUTS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        centres, visible = self.locator(x)
        return self.read_at(x, centres.detach()), centres, visible


def box_centres(boxes: np.ndarray, res: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``RenderSet.eyes`` boxes -> centres in [-1, 1] frame coordinates and visibility.

    Args:
        boxes: (N, 2, 4) pixel boxes (x0, y0, x1, y1), x1/y1 exclusive; res: the frames' (H, W).
    Returns:
        centres (N, 2, 2) float32 as (x, y); visible (N, 2) bool (a non-empty box).
    """
    h, w = res
    b = boxes.astype(np.float32)
    cx = (b[..., 0] + b[..., 2]) / w - 1  # the box centre (x0 + x1) / 2 in pixel edges, scaled to [-1, 1]
    cy = (b[..., 1] + b[..., 3]) / h - 1
    return np.stack([cx, cy], -1), (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _scaled(poses: np.ndarray, name: str) -> np.ndarray:
    i = MOTION_INDEX[name]
    return 2 * (poses[:, i] - _LO[i]) / (_HI[i] - _LO[i]) - 1


def eye_targets(poses: np.ndarray) -> np.ndarray:
    """Rig poses (N, NUM_MOTION) -> per-eye targets (N, 2, NUM_EYE_OUTPUTS) scaled to [-1, 1] by each channel's
    range; the second (mirrored) eye's gaze_x is negated."""
    out = np.empty((len(poses), 2, NUM_EYE_OUTPUTS), np.float32)
    for e, side in enumerate(EYE_SIDES):
        out[:, e, 0] = _scaled(poses, f"blink_{side}")
        for k, name in enumerate(EYE_OUTPUTS[1:], start=1):
            out[:, e, k] = _scaled(poses, name)
    out[:, 1, 1] *= -1
    return out


def _unscale(values: np.ndarray, name: str) -> np.ndarray:
    i = MOTION_INDEX[name]
    return _LO[i] + (np.clip(values, -1, 1) + 1) / 2 * (_HI[i] - _LO[i])


def eye_loss(reader: EyeReader, x: torch.Tensor, centres: torch.Tensor, visible: torch.Tensor,
             targets: torch.Tensor, jitter: float, gen: torch.Generator) -> torch.Tensor:
    """Both stages' loss on one batch.

    The locator regresses the true centres (smooth-L1, in pixels of a 128 frame; visible eyes only) and the
    visibility (binary cross-entropy). The patch net reads patches at the true centres moved by a random offset
    (normal, ``jitter`` pixels of a 128 frame per axis, about the locator's error), so it reads well at the
    locator's guesses; smooth-L1 on the visible eyes' targets.

    Args:
        x: (B, 3, H, W); centres: (B, 2, 2) in [-1, 1]; visible: (B, 2) bool; targets: (B, 2, NUM_EYE_OUTPUTS).
    """
    pred_c, pred_v = reader.locator(x)
    mask = visible.float()  # (B, 2)
    px = 64.0  # [-1, 1] -> pixels of a 128 frame
    loc = (F.smooth_l1_loss(pred_c * px, centres * px, beta=1.0, reduction="none").sum(-1) * mask).sum()
    loc = loc / mask.sum().clamp_min(1) + F.binary_cross_entropy_with_logits(pred_v, mask)
    moved = centres + torch.randn(centres.shape, generator=gen) * (jitter / px)
    per = F.smooth_l1_loss(reader.read_at(x, moved), targets, beta=0.1, reduction="none").mean(-1)  # (B, 2)
    return 0.1 * loc + (per * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class EyeTrack:
    """The eye reader's reading of a frame sequence.

    Attributes:
        motion: (F, len(EYE_CHANNELS)) float32 in rig units, ``EYE_CHANNELS`` order (gaze and brow averaged over
            the visible eyes; a channel of a frame with no visible eye, or blink of a hidden eye, is NaN).
        visible: (F, 2) float32 probability that each eye faces the viewer.
        centres: (F, 2, 2) float32 eye centres (x, y) in [-1, 1] frame coordinates.
    """

    motion: np.ndarray
    visible: np.ndarray
    centres: np.ndarray


@torch.no_grad()
def read_eyes(reader: EyeReader, frames: np.ndarray, batch: int = 256) -> EyeTrack:
    """Run the reader over frames (F, H, W, 3) uint8."""
    reader.eval()
    outs, vis, cen = [], [], []
    for i in range(0, len(frames), batch):
        o, c, v = reader(frames_to_tensor(frames[i: i + batch]))
        outs.append(o.numpy())
        vis.append(torch.sigmoid(v).numpy())
        cen.append(c.numpy())
    if not outs:
        return EyeTrack(np.zeros((0, len(EYE_CHANNELS)), np.float32), np.zeros((0, 2), np.float32),
                        np.zeros((0, 2, 2), np.float32))
    out, visible = np.concatenate(outs), np.concatenate(vis)  # (F, 2, K), (F, 2)
    out[:, 1, 1] *= -1  # the mirrored eye's gaze_x back to the viewer's frame
    seen = visible > 0.5
    motion = np.full((len(out), len(EYE_CHANNELS)), np.nan, np.float32)
    for e, side in enumerate(EYE_SIDES):
        motion[seen[:, e], EYE_CHANNELS.index(f"blink_{side}")] = _unscale(out[seen[:, e], e, 0], f"blink_{side}")
    any_seen = seen.any(1)
    w = seen[any_seen].astype(np.float32)
    w /= w.sum(1, keepdims=True)
    for k, name in ((1, "gaze_x"), (2, "gaze_y"), (3, "brow_raise")):
        motion[any_seen, EYE_CHANNELS.index(name)] = _unscale((out[any_seen, :, k] * w).sum(1), name)
    return EyeTrack(motion, visible, np.concatenate(cen))


def merge_eyes(track: ProbeTrack, eyes: EyeTrack) -> ProbeTrack:
    """The probe's track with the eye reader's channels where it read them (not NaN); the probe's elsewhere.

    Where one eye is hidden its blink takes the other eye's reading (lids mostly move together), then the
    probe's."""
    if len(track.motion) != len(eyes.motion):
        raise ValueError(f"merge_eyes: the probe track has {len(track.motion)} frames, the eye track "
                         f"{len(eyes.motion)}")
    motion = track.motion.copy()
    read = eyes.motion.copy()
    bl, br = EYE_CHANNELS.index("blink_l"), EYE_CHANNELS.index("blink_r")
    read[:, bl] = np.where(np.isnan(read[:, bl]), read[:, br], read[:, bl])
    read[:, br] = np.where(np.isnan(read[:, br]), read[:, bl], read[:, br])
    for k, name in enumerate(EYE_CHANNELS):
        i = MOTION_INDEX[name]
        motion[:, i] = np.where(np.isnan(read[:, k]), motion[:, i], read[:, k])
    return ProbeTrack(motion, track.emotion_probs, track.features)


@dataclass
class EyeAccuracy:
    """The reader's accuracy on one labelled set: per channel (visible eyes only; ``ChannelAccuracy``), the
    locator's centre error in pixels of the set's frames (median, 95th percentile, visible eyes), and the share
    of eyes whose visibility it calls right."""

    split: str
    frames: int
    channels: dict[str, ChannelAccuracy] = field(default_factory=dict)
    locator_px_p50: float = 0.0
    locator_px_p95: float = 0.0
    visibility_acc: float = 0.0


def eye_accuracy(reader: EyeReader, frames: np.ndarray, poses: np.ndarray, boxes: np.ndarray,
                 split: str) -> EyeAccuracy:
    """``EyeAccuracy`` of the reader on labelled frames (``RenderSet`` frames, poses, eyes)."""
    track = read_eyes(reader, frames)
    centres, visible = box_centres(boxes, frames.shape[1:3])
    err = np.linalg.norm((track.centres - centres) * np.array(frames.shape[2:0:-1]) / 2, axis=-1)[visible]
    acc = EyeAccuracy(split, len(frames), locator_px_p50=float(np.median(err)) if err.size else float("nan"),
                      locator_px_p95=float(np.percentile(err, 95)) if err.size else float("nan"),
                      visibility_acc=float(((track.visible > 0.5) == visible).mean()))
    for k, name in enumerate(EYE_CHANNELS):
        side = name[-1] if name.startswith("blink") else None
        rows = visible[:, EYE_SIDES.index(side)] if side else visible.any(1)
        rows = rows & ~np.isnan(track.motion[:, k])
        pred, true = track.motion[rows, k], poses[rows, MOTION_INDEX[name]]
        acc.channels[name] = ChannelAccuracy(float(np.abs(pred - true).mean()) if rows.any() else float("nan"),
                                             _pearson(pred, true) if rows.sum() > 1 else float("nan"))
    return acc
