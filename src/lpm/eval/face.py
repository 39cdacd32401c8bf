"""The face reader: eyes, brows, mouth and emotion read from close crops of each feature, found by a locator.

The motion probe reads the whole head crop at 96 px; an eyelid, a pupil or a brow moves 30-250 pixels of a
128x128 frame, and the probe's r for them stayed at 0.2-0.6 on the truth render: it sees them but cannot place
them (and on the unseen sketch style its mouth reading drops too). This reader works in two stages:

1. ``FaceLocator``: the head crop (``probe.head_crop``) -> an anchor per region (``REGIONS``: each eye's centre,
   the mouth's upper edge at its middle, which does not move when the jaw opens) in frame coordinates, and
   whether the region faces the viewer (an eye on the far side of a turned head has no pixels to read).
2. Patch nets on a crop around each anchor (sizes are fractions of the frame, so any resolution reads alike):
   ``eye`` (shared by both eyes; the right eye mirrored so both look alike): eyelid, gaze and the brow above it;
   ``mouth``: jaw, rounding, width, smile. Each also regresses the four emotion intensities (a surprised face
   raises the brows, an angry one lowers them, a happy one squints and smiles), and an emotion head over the
   three patches' features classifies the emotion. The head reads those features without training them: a first
   run with its cross-entropy flowing into the patch nets (and style noise up to 0.08) read the eyes at val r
   0.17-0.64; detached (noise up to 0.05), 0.86-0.92.

``read_face`` gives the reader's channels (``FACE_CHANNELS``) and emotion per frame; ``merge_face`` puts them
into a ``ProbeTrack`` where the region is visible. Trained by ``lpm eval train-face`` on the same labelled renders
as the probe (``lpm.eval.renders``, whose sets carry each frame's region boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpm.eval.probe import (
    ChannelAccuracy,
    ProbeTrack,
    _pearson,
    conv_stage,
    encode_targets,
    frames_to_tensor,
    from_unit,
    head_crop,
    to_unit,
)
from lpm.world.motion import EMOTIONS, MOTION_INDEX

# The regions, in the order of ``RenderSet.boxes`` and the locator's outputs. "eye_l" is the character's own left
# eye (on the viewer's right from the front); "eye_r" is read mirrored, so its gaze_x flips sign.
REGIONS: tuple[str, ...] = ("eye_l", "eye_r", "mouth")
EMOTION_OUTPUTS: tuple[str, ...] = ("emo_happy", "emo_sad", "emo_surprised", "emo_angry")
# Per-patch outputs, in order (the emotion intensities only help training; "blink" is blink_l or blink_r).
EYE_OUTPUTS: tuple[str, ...] = ("blink", "gaze_x", "gaze_y", "brow_raise", *EMOTION_OUTPUTS)
MOUTH_OUTPUTS: tuple[str, ...] = ("jaw_open", "mouth_round", "mouth_wide", "smile", *EMOTION_OUTPUTS)
NUM_PATCH_OUTPUTS = len(EYE_OUTPUTS)
assert len(MOUTH_OUTPUTS) == NUM_PATCH_OUTPUTS
# The motion channels the reader provides (merged into the probe's track).
FACE_CHANNELS: tuple[str, ...] = ("blink_l", "blink_r", "gaze_x", "gaze_y", "brow_raise", "jaw_open", "mouth_round",
                                  "mouth_wide", "smile")
# Where ``read_face`` reads each region: the locator's anchor moved by these offsets (x, y in pixels of a 128
# frame, a 3x3 grid of 1 px, about the locator's median error), the readings averaged. On the quick suite's truth
# render it lifts every eye channel a little (brow r 0.597 -> 0.612 seen, gaze y 0.542 -> 0.547 zero-shot; stop 32).
READ_SHIFTS: tuple[tuple[float, float], ...] = tuple((float(dx), float(dy)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@dataclass(frozen=True)
class FaceReaderConfig:
    """Shape of both stages. Patch sizes and offsets are fractions of the frame (pixels of a 128 frame noted)."""

    locator_res: int = 96  # the head crop (96 px of a 128 frame) is resized to this
    locator_widths: tuple[int, ...] = (16, 32, 64, 96)  # stride-2 stages
    eye_w: float = 0.1875  # 24 px: the eye with its corners
    eye_h: float = 0.25  # 32 px: the eye and the brow above it
    eye_dy: float = -0.047  # the patch centre sits 6 px above the eye centre: the brow
    eye_res: tuple[int, int] = (40, 30)  # (height, width) the patch is resampled to
    mouth_w: float = 0.375  # 48 px: the widest mouth (a wide smile spans ~47)
    mouth_h: float = 0.25  # 32 px: from just above the upper lip to below the open jaw (~24 px)
    mouth_dy: float = 0.094  # the patch centre sits 12 px below the mouth's upper edge
    mouth_res: tuple[int, int] = (32, 48)
    patch_widths: tuple[int, ...] = (32, 32, 64, 64, 96, 96, 128)
    patch_strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 2)
    hidden: int = 128


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class FaceLocator(nn.Module):
    """Frame -> anchors (B, R, 2) as (x, y) in [-1, 1] frame coordinates (align_corners=False) and visibility
    logits (B, R), regions in ``REGIONS`` order."""

    def __init__(self, cfg: FaceReaderConfig):
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.locator_widths)
        self.stages = nn.Sequential(*[conv_stage(a, b, double=i > 0)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        side = cfg.locator_res // 2 ** len(cfg.locator_widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.locator_widths[-1] * side * side, cfg.hidden),
                                  nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 3 * len(REGIONS)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) whole frames in [-1, 1]."""
        crop = head_crop(x)
        res = self.cfg.locator_res
        if crop.shape[-2:] != (res, res):
            crop = F.interpolate(crop, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        out = self.head(self.stages(crop))  # (B, 3R)
        r = len(REGIONS)
        return out[:, : 2 * r].view(-1, r, 2), out[:, 2 * r:]


class PatchNet(nn.Module):
    """Patches (B, 3, h, w) -> outputs (B, NUM_PATCH_OUTPUTS) and features (B, hidden)."""

    def __init__(self, cfg: FaceReaderConfig, res: tuple[int, int]):
        super().__init__()
        chans = (3, *cfg.patch_widths)
        self.convs = nn.Sequential(*[_conv(a, b, s) for a, b, s in zip(chans[:-1], chans[1:], cfg.patch_strides)])
        h, w = res
        for s in cfg.patch_strides:
            h, w = -(-h // s), -(-w // s)
        # Flatten, not pool: where the pupil or the lips sit in the patch is the reading.
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(cfg.patch_widths[-1] * h * w, cfg.hidden),
                                  nn.ReLU(inplace=True))
        self.out = nn.Linear(cfg.hidden, NUM_PATCH_OUTPUTS)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.neck(self.convs(patches))
        return self.out(h), h


def crop_patches(x: torch.Tensor, anchors: torch.Tensor, w: float, h: float, dy: float, res: tuple[int, int],
                 mirror: tuple[bool, ...]) -> torch.Tensor:
    """Cut a patch per anchor out of frames.

    Args:
        x: (B, 3, H, W) frames; anchors: (B, K, 2) (x, y) in [-1, 1] frame coordinates; w, h: the patch size and
        dy: its centre's offset below the anchor, as fractions of the frame; res: (height, width) of the result;
        mirror: per anchor, whether to flip the patch left-right.
    Returns:
        (B * K, 3, *res), the K patches of each frame in turn.
    """
    b, k = anchors.shape[:2]
    a = anchors.reshape(b * k, 2)
    sign = torch.tensor([-1.0 if m else 1.0 for m in mirror], dtype=x.dtype).repeat(b)
    theta = torch.zeros(b * k, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = w * sign  # output [-1, 1] spans w * W pixels of the frame
    theta[:, 1, 1] = h
    theta[:, 0, 2] = a[:, 0]
    theta[:, 1, 2] = a[:, 1] + 2 * dy
    grid = F.affine_grid(theta, [b * k, 3, *res], align_corners=False)
    return F.grid_sample(x.repeat_interleave(k, dim=0), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


@dataclass
class FaceOutputs:
    """One forward of the reader.

    Attributes:
        regions: (B, R, NUM_PATCH_OUTPUTS): per region its patch net's outputs (``EYE_OUTPUTS`` for the eyes,
            ``MOUTH_OUTPUTS`` for the mouth), scaled like ``face_targets``.
        emotion: (B, len(EMOTIONS)) logits.
        anchors: (B, R, 2) the locator's anchors; visible: (B, R) its visibility logits.
    """

    regions: torch.Tensor
    emotion: torch.Tensor
    anchors: torch.Tensor
    visible: torch.Tensor


class FaceReader(nn.Module):
    """Both stages (module docstring)."""

    def __init__(self, cfg: FaceReaderConfig = FaceReaderConfig()):
        super().__init__()
        self.cfg = cfg
        self.locator = FaceLocator(cfg)
        self.eye = PatchNet(cfg, cfg.eye_res)
        self.mouth = PatchNet(cfg, cfg.mouth_res)
        self.emotion = nn.Sequential(nn.Linear(len(REGIONS) * cfg.hidden, cfg.hidden), nn.ReLU(inplace=True),
                                     nn.Linear(cfg.hidden, len(EMOTIONS)))

    def read_at(self, x: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) frames, (B, R, 2) anchors -> region outputs (B, R, NUM_PATCH_OUTPUTS), emotion logits."""
        cfg, b = self.cfg, x.shape[0]
        eyes = crop_patches(x, anchors[:, :2], cfg.eye_w, cfg.eye_h, cfg.eye_dy, cfg.eye_res, (False, True))
        mouth = crop_patches(x, anchors[:, 2:], cfg.mouth_w, cfg.mouth_h, cfg.mouth_dy, cfg.mouth_res, (False,))
        eo, eh = self.eye(eyes)  # (2B, K), (2B, hidden)
        mo, mh = self.mouth(mouth)
        regions = torch.cat([eo.view(b, 2, -1), mo.view(b, 1, -1)], 1)
        return regions, self.emotion(torch.cat([eh.view(b, -1), mh], 1).detach())

    def forward(self, x: torch.Tensor, shifts: tuple[tuple[float, float], ...] = ((0.0, 0.0),)) -> FaceOutputs:
        """Locate, then read each region at its anchor moved by each of ``shifts`` (x, y in pixels of a 128
        frame): the regions' outputs averaged, the emotion as the log of the mean probabilities."""
        if not shifts:
            raise ValueError("FaceReader: shifts must hold at least one offset")
        anchors, visible = self.locator(x)
        regions, probs = 0.0, 0.0
        for dx, dy in shifts:
            r, e = self.read_at(x, anchors.detach() + torch.tensor([dx, dy], dtype=anchors.dtype) / 64.0)
            regions, probs = regions + r, probs + e.softmax(-1)
        return FaceOutputs(regions / len(shifts), (probs / len(shifts)).log(), anchors, visible)


def region_anchors(boxes: np.ndarray, res: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``RenderSet.boxes`` -> anchors in [-1, 1] frame coordinates and visibility.

    An eye's anchor is its box centre; the mouth's is the middle of its box's upper edge (the upper lip, which
    stays put when the jaw opens).

    Args:
        boxes: (N, R, 4) pixel boxes (x0, y0, x1, y1), x1/y1 exclusive, ``REGIONS`` order; res: the frames' (H, W).
    Returns:
        anchors (N, R, 2) float32 as (x, y); visible (N, R) bool (a non-empty box).
    """
    h, w = res
    b = boxes.astype(np.float32)
    ax = (b[..., 0] + b[..., 2]) / w - 1  # (x0 + x1) / 2 in pixel edges, scaled to [-1, 1]
    ay = (b[..., 1] + b[..., 3]) / h - 1
    mouth = REGIONS.index("mouth")
    ay[:, mouth] = 2 * b[:, mouth, 1] / h - 1
    return np.stack([ax, ay], -1), (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def face_targets(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rig poses (N, NUM_MOTION) -> per-region targets (N, R, NUM_PATCH_OUTPUTS) scaled to [-1, 1] by each
    channel's range (the mirrored eye's gaze_x negated), and the emotion class (N,) (``probe.encode_targets``)."""
    out = np.empty((len(poses), len(REGIONS), NUM_PATCH_OUTPUTS), np.float32)
    for r, names in ((0, ("blink_l", *EYE_OUTPUTS[1:])), (1, ("blink_r", *EYE_OUTPUTS[1:])), (2, MOUTH_OUTPUTS)):
        for k, name in enumerate(names):
            out[:, r, k] = to_unit(poses[:, MOTION_INDEX[name]], MOTION_INDEX[name])
    out[:, 1, EYE_OUTPUTS.index("gaze_x")] *= -1
    return out, encode_targets(poses)[1]


def face_loss(reader: FaceReader, x: torch.Tensor, anchors: torch.Tensor, visible: torch.Tensor,
              targets: torch.Tensor, emotion: torch.Tensor, jitter: float, gen: torch.Generator) -> torch.Tensor:
    """Both stages' loss on one batch.

    The locator regresses the true anchors (smooth-L1, in pixels of a 128 frame; visible regions only) and the
    visibility (binary cross-entropy). The patch nets read patches at the true anchors moved by a random offset
    (normal, ``jitter`` pixels of a 128 frame per axis, about the locator's error), so they read well at the
    locator's guesses: smooth-L1 on the visible regions' targets, plus 0.5 cross-entropy on the emotion.

    Args:
        x: (B, 3, H, W); anchors: (B, R, 2) in [-1, 1]; visible: (B, R) bool; targets: (B, R, NUM_PATCH_OUTPUTS);
        emotion: (B,) int64.
    """
    pred_a, pred_v = reader.locator(x)
    mask = visible.float()  # (B, R)
    px = 64.0  # [-1, 1] -> pixels of a 128 frame
    loc = (F.smooth_l1_loss(pred_a * px, anchors * px, beta=1.0, reduction="none").sum(-1) * mask).sum()
    loc = loc / mask.sum().clamp_min(1) + F.binary_cross_entropy_with_logits(pred_v, mask)
    moved = anchors + torch.randn(anchors.shape, generator=gen) * (jitter / px)
    regions, logits = reader.read_at(x, moved)
    per = F.smooth_l1_loss(regions, targets, beta=0.1, reduction="none").mean(-1)  # (B, R)
    read = (per * mask).sum() / mask.sum().clamp_min(1)
    return 0.1 * loc + read + 0.5 * F.cross_entropy(logits, emotion)


@dataclass
class FaceTrack:
    """The face reader's reading of a frame sequence.

    Attributes:
        motion: (F, len(FACE_CHANNELS)) float32 in rig units, ``FACE_CHANNELS`` order: gaze and brow averaged over
            the visible eyes, each blink from its own eye, the mouth channels from the mouth; NaN where the
            region(s) a channel comes from face away.
        emotion_probs: (F, len(EMOTIONS)) float32.
        visible: (F, R) float32 probability that each region faces the viewer.
        anchors: (F, R, 2) float32 (x, y) in [-1, 1] frame coordinates.
    """

    motion: np.ndarray
    emotion_probs: np.ndarray
    visible: np.ndarray
    anchors: np.ndarray


@torch.no_grad()
def read_face(reader: FaceReader, frames: np.ndarray, batch: int = 256,
              shifts: tuple[tuple[float, float], ...] = READ_SHIFTS) -> FaceTrack:
    """Run the reader over frames (F, H, W, 3) uint8, each region read at ``shifts`` around its anchor."""
    reader.eval()
    regions, emo, vis, anc = [], [], [], []
    for i in range(0, len(frames), batch):
        o = reader(frames_to_tensor(frames[i: i + batch]), shifts)
        regions.append(o.regions.numpy())
        emo.append(o.emotion.softmax(-1).numpy())
        vis.append(torch.sigmoid(o.visible).numpy())
        anc.append(o.anchors.numpy())
    r = len(REGIONS)
    if not regions:
        return FaceTrack(np.zeros((0, len(FACE_CHANNELS)), np.float32), np.zeros((0, len(EMOTIONS)), np.float32),
                         np.zeros((0, r), np.float32), np.zeros((0, r, 2), np.float32))
    out, visible = np.concatenate(regions), np.concatenate(vis)  # (F, R, K), (F, R)
    out[:, 1, EYE_OUTPUTS.index("gaze_x")] *= -1  # the mirrored eye's gaze_x back to the viewer's frame
    seen = visible > 0.5
    motion = np.full((len(out), len(FACE_CHANNELS)), np.nan, np.float32)

    def put(name: str, rows: np.ndarray, values: np.ndarray) -> None:
        motion[rows, FACE_CHANNELS.index(name)] = from_unit(values, MOTION_INDEX[name])

    for e, name in enumerate(("blink_l", "blink_r")):
        put(name, seen[:, e], out[seen[:, e], e, 0])
    eyes = seen[:, :2].any(1)
    w = seen[eyes, :2].astype(np.float32)
    w /= w.sum(1, keepdims=True)
    for k in (1, 2, 3):
        put(EYE_OUTPUTS[k], eyes, (out[eyes, :2, k] * w).sum(1))
    mouth = seen[:, 2]
    for k, name in enumerate(MOUTH_OUTPUTS[:4]):
        put(name, mouth, out[mouth, 2, k])
    return FaceTrack(motion, np.concatenate(emo), visible, np.concatenate(anc))


def merge_face(track: ProbeTrack, face: FaceTrack, emotion: bool = True) -> ProbeTrack:
    """The probe's track with the face reader's channels where it read them (not NaN), the probe's elsewhere,
    and (``emotion``) the reader's emotion probabilities. The probe's features (world-FID) are kept.

    Where one eye faces away its blink takes the other eye's reading (lids mostly move together), then the
    probe's."""
    if len(track.motion) != len(face.motion):
        raise ValueError(f"merge_face: the probe track has {len(track.motion)} frames, the face track "
                         f"{len(face.motion)}")
    motion = track.motion.copy()
    read = face.motion.copy()
    bl, br = FACE_CHANNELS.index("blink_l"), FACE_CHANNELS.index("blink_r")
    read[:, bl] = np.where(np.isnan(read[:, bl]), read[:, br], read[:, bl])
    read[:, br] = np.where(np.isnan(read[:, br]), read[:, bl], read[:, br])
    for k, name in enumerate(FACE_CHANNELS):
        i = MOTION_INDEX[name]
        motion[:, i] = np.where(np.isnan(read[:, k]), motion[:, i], read[:, k])
    return ProbeTrack(motion, face.emotion_probs if emotion else track.emotion_probs, track.features)


@dataclass
class FaceAccuracy:
    """The reader's accuracy on one labelled set: per channel (visible regions only; ``ChannelAccuracy``), the
    emotion class accuracy per frame, the locator's anchor error in pixels of the set's frames (median, 95th
    percentile, visible regions) and the share of regions whose visibility it calls right."""

    split: str
    frames: int
    channels: dict[str, ChannelAccuracy] = field(default_factory=dict)
    emotion_acc: float = 0.0
    locator_px_p50: float = 0.0
    locator_px_p95: float = 0.0
    visibility_acc: float = 0.0


def face_accuracy(reader: FaceReader, frames: np.ndarray, poses: np.ndarray, boxes: np.ndarray,
                  split: str) -> FaceAccuracy:
    """``FaceAccuracy`` of the reader on labelled frames (``RenderSet`` frames, poses, boxes)."""
    track = read_face(reader, frames)
    anchors, visible = region_anchors(boxes, frames.shape[1:3])
    err = np.linalg.norm((track.anchors - anchors) * np.array(frames.shape[2:0:-1]) / 2, axis=-1)[visible]
    _, emotion = encode_targets(poses)
    acc = FaceAccuracy(split, len(frames), emotion_acc=float((track.emotion_probs.argmax(1) == emotion).mean()),
                       locator_px_p50=float(np.median(err)) if err.size else float("nan"),
                       locator_px_p95=float(np.percentile(err, 95)) if err.size else float("nan"),
                       visibility_acc=float(((track.visible > 0.5) == visible).mean()))
    for k, name in enumerate(FACE_CHANNELS):
        rows = ~np.isnan(track.motion[:, k])
        rows &= {"blink_l": visible[:, 0], "blink_r": visible[:, 1]}.get(
            name, visible[:, 2] if name in MOUTH_OUTPUTS else visible[:, :2].any(1))
        pred, true = track.motion[rows, k], poses[rows, MOTION_INDEX[name]]
        acc.channels[name] = ChannelAccuracy(float(np.abs(pred - true).mean()) if rows.any() else float("nan"),
                                             _pearson(pred, true) if rows.sum() > 1 else float("nan"))
    return acc
