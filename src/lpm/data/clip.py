"""The clip format of ARCHITECTURE.md: write, read into typed tensors, validate.

```
DIR/manifest.jsonl            one JSON object per clip: id, split, style, fps, width, height, frames, path
DIR/<id>/video.mp4            H.264, 24 fps, RGB
DIR/<id>/audio.wav            16 kHz PCM, 2 channels: 0 = the character's own voice, 1 = the partner's voice
DIR/<id>/refs/global.png      the global appearance reference
DIR/<id>/refs/body_<view>.png view in front, left, right, back (any subset)
DIR/<id>/refs/expr_<name>.png expression exemplars
DIR/<id>/meta.json            style, identity, caption, per-frame state, events, seeds
DIR/<id>/motion.npz           ground-truth motion per frame (world clips only): names + values [F, P]
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lpm.data.video import MediaError, read_mp4, read_wav, write_mp4, write_wav
from lpm.errors import LpmError
from lpm.fsutil import atomic_path, atomic_write_text
from lpm.media.image import read_picture

SAMPLE_RATE = 16000
FPS = 24
SPLITS = ("train", "val", "zeroshot")
REF_KINDS = ("global", "body", "expr")
STATE_NAMES = ("speak", "listen", "idle")
# Frames may differ from the audio length by at most this many frames (rounding at the clip's end).
FRAME_AUDIO_TOLERANCE = 1


class ClipError(LpmError):
    """A clip that does not follow the format; the message names the clip and the field."""

    def __init__(self, clip: str | Path, field_name: str, problem: str):
        super().__init__(f"clip {clip}: {field_name}: {problem}")
        self.clip, self.field, self.problem = str(clip), field_name, problem


@dataclass
class ClipMeta:
    """The parsed ``meta.json`` (the fields every consumer relies on; the rest stays in ``extra``)."""

    id: str
    split: str
    style: str
    fps: int
    width: int
    height: int
    frames: int
    sample_rate: int
    caption: str
    states: list[str]  # per frame: speak | listen | idle
    events: list[dict[str, Any]]  # each with at least "type" and "frame"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Clip:
    """One clip loaded as tensors.

    Attributes:
        video: (F, 3, H, W) float32 in [-1, 1], or None when loaded with ``load_video=False``.
        audio: (2, N) float32 at 16 kHz; row 0 = self, row 1 = partner.
        refs: name (``global``, ``body_front``, ``expr_happy``, ...) -> (3, H, W) float32 in [-1, 1].
        motion: (F, P) float32 ground truth, or None (real footage may carry estimated channels only).
        motion_names: the P channel names of ``motion``.
        states: (F,) int64 index into STATE_NAMES.
    """

    path: Path
    meta: ClipMeta
    video: torch.Tensor | None
    audio: torch.Tensor
    refs: dict[str, torch.Tensor]
    motion: torch.Tensor | None
    motion_names: tuple[str, ...]
    states: torch.Tensor


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [-1, 1] -> (H, W, 3) uint8."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Load any image file as RGB uint8 (``lpm.media.image.read_picture``: EXIF orientation applied, transparency
    on white, an animation's first frame, size limits), optionally resized.

    Returns:
        (H, W, 3) uint8.
    """
    image = read_picture(path).image
    if size is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS), np.uint8)
    return image


def write_clip(clip_dir: str | Path, frames: np.ndarray, audio: np.ndarray, refs: dict[str, np.ndarray],
               meta: dict[str, Any], motion: np.ndarray | None = None,
               motion_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Write one clip directory; returns its manifest row (path relative to the data set root).

    Args:
        frames: (F, H, W, 3) uint8.
        audio: (2, N) float in [-1, 1] at 16 kHz.
        refs: name -> (H, W, 3) uint8; names as in the format (``global``, ``body_front``, ``expr_happy``).
        meta: must hold id, split, style, caption, states, events; fps/size/frames are filled in here.
        motion: (F, P) float32 with ``motion_names``.
    """
    clip_dir = Path(clip_dir)
    (clip_dir / "refs").mkdir(parents=True, exist_ok=True)
    f, h, w = frames.shape[:3]
    meta = dict(meta)
    meta.update(fps=FPS, width=int(w), height=int(h), frames=int(f), sample_rate=SAMPLE_RATE)
    write_mp4(clip_dir / "video.mp4", frames, fps=FPS)
    write_wav(clip_dir / "audio.wav", audio, SAMPLE_RATE)
    for name, img in refs.items():
        with atomic_path(clip_dir / "refs" / f"{name}.png", ".png") as tmp:
            Image.fromarray(img).save(tmp)
    if motion is not None:
        assert motion_names is not None and motion.shape == (f, len(motion_names))
        with atomic_path(clip_dir / "motion.npz", ".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, names=np.array(motion_names), values=motion.astype(np.float32))
    # meta.json last: a clip directory with meta.json is complete.
    atomic_write_text(clip_dir / "meta.json", json.dumps(meta, indent=1))
    return {k: meta[k] for k in ("id", "split", "style", "fps", "width", "height", "frames")} | {
        "path": clip_dir.name
    }


def read_manifest(root: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``root/manifest.jsonl`` (optionally one split), with a clear error when it is absent."""
    root = Path(root)
    path = root / "manifest.jsonl"
    if not path.is_file():
        raise ClipError(root, "manifest.jsonl", "file does not exist (is this a data set directory?)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ClipError(root, f"manifest.jsonl line {i}", f"invalid JSON: {e}") from None
        for key in ("id", "split", "path"):
            if key not in row:
                raise ClipError(root, f"manifest.jsonl line {i}", f"missing key {key!r}")
        if split is None or row["split"] == split:
            rows.append(row)
    return rows


def _parse_meta(clip_dir: Path) -> ClipMeta:
    path = clip_dir / "meta.json"
    if not path.is_file():
        raise ClipError(clip_dir, "meta.json", "file does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ClipError(clip_dir, "meta.json", f"invalid JSON: {e}") from None
    required = {"id": str, "split": str, "style": str, "fps": int, "width": int, "height": int, "frames": int,
                "sample_rate": int, "caption": str, "states": list, "events": list}
    for key, typ in required.items():
        if key not in raw:
            raise ClipError(clip_dir, f"meta.json:{key}", "missing")
        if not isinstance(raw[key], typ):
            raise ClipError(clip_dir, f"meta.json:{key}", f"expected {typ.__name__}, got {raw[key]!r:.60}")
    if raw["fps"] != FPS:
        raise ClipError(clip_dir, "meta.json:fps", f"expected {FPS}, got {raw['fps']}")
    if raw["sample_rate"] != SAMPLE_RATE:
        raise ClipError(clip_dir, "meta.json:sample_rate", f"expected {SAMPLE_RATE}, got {raw['sample_rate']}")
    if raw["split"] not in SPLITS:
        raise ClipError(clip_dir, "meta.json:split", f"expected one of {SPLITS}, got {raw['split']!r}")
    if len(raw["states"]) != raw["frames"]:
        raise ClipError(clip_dir, "meta.json:states",
                        f"expected one state per frame ({raw['frames']}), got {len(raw['states'])}")
    bad = sorted(set(raw["states"]) - set(STATE_NAMES))
    if bad:
        raise ClipError(clip_dir, "meta.json:states", f"unknown state(s) {bad}; expected {STATE_NAMES}")
    for i, ev in enumerate(raw["events"]):
        if not isinstance(ev, dict) or "type" not in ev or "frame" not in ev:
            raise ClipError(clip_dir, f"meta.json:events[{i}]", "each event needs 'type' and 'frame'")
    extra = {k: v for k, v in raw.items() if k not in required}
    return ClipMeta(**{k: raw[k] for k in required}, extra=extra)


def read_clip(clip_dir: str | Path, load_video: bool = True, start: int = 0,
              count: int | None = None) -> Clip:
    """Load and validate one clip directory.

    Args:
        load_video: decode ``video.mp4`` (the slow part); False gives ``video=None``.
        start, count: decode only frames [start, start+count) (motion and states are sliced alike,
            audio is cut to the same span).
    Raises:
        ClipError naming the clip and the field on any missing file or inconsistency.
    """
    clip_dir = Path(clip_dir)
    if not clip_dir.is_dir():
        raise ClipError(clip_dir, "directory", "does not exist")
    meta = _parse_meta(clip_dir)
    f_total = meta.frames

    # Audio: 16 kHz, 2 channels, length consistent with the frame count.
    try:
        audio, rate = read_wav(clip_dir / "audio.wav")
    except MediaError as e:
        raise ClipError(clip_dir, "audio.wav", str(e)) from None
    if rate != SAMPLE_RATE:
        raise ClipError(clip_dir, "audio.wav", f"sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
    if audio.shape[0] != 2:
        raise ClipError(clip_dir, "audio.wav", f"{audio.shape[0]} channel(s), expected 2 (self, partner)")
    spf = SAMPLE_RATE / FPS
    audio_frames = audio.shape[1] / spf
    if abs(audio_frames - f_total) > FRAME_AUDIO_TOLERANCE:
        raise ClipError(clip_dir, "frames",
                        f"meta says {f_total} frames but audio.wav holds {audio_frames:.1f} frames of audio "
                        f"({audio.shape[1]} samples at {SAMPLE_RATE} Hz)")

    end = f_total if count is None else min(f_total, start + count)
    if not 0 <= start < end:
        raise ClipError(clip_dir, "frames", f"requested frames [{start}, {end}) outside [0, {f_total})")

    video = None
    if load_video:
        try:
            frames = read_mp4(clip_dir / "video.mp4", start=start, count=end - start)
        except MediaError as e:
            raise ClipError(clip_dir, "video.mp4", str(e)) from None
        if frames.shape[0] != end - start:
            raise ClipError(clip_dir, "video.mp4", f"holds fewer frames than meta.json says ({f_total})")
        if frames.shape[1:3] != (meta.height, meta.width):
            raise ClipError(clip_dir, "video.mp4", f"frame size {frames.shape[2]}x{frames.shape[1]}, "
                                                   f"meta says {meta.width}x{meta.height}")
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (F, 3, H, W)

    refs: dict[str, torch.Tensor] = {}
    ref_dir = clip_dir / "refs"
    if not (ref_dir / "global.png").is_file():
        raise ClipError(clip_dir, "refs/global.png", "file does not exist")
    for p in sorted(ref_dir.glob("*.png")):
        if p.name.startswith("."):
            continue
        kind = p.stem.split("_", 1)[0]
        if kind not in REF_KINDS:
            raise ClipError(clip_dir, f"refs/{p.name}", f"unknown reference kind {kind!r}; expected {REF_KINDS}")
        try:
            refs[p.stem] = image_to_tensor(load_image(p))
        except MediaError as e:
            raise ClipError(clip_dir, f"refs/{p.name}", str(e)) from None

    motion, names = None, ()
    mpath = clip_dir / "motion.npz"
    if mpath.is_file():
        with np.load(mpath, allow_pickle=False) as z:
            if "names" not in z or "values" not in z:
                raise ClipError(clip_dir, "motion.npz", "expected arrays 'names' and 'values'")
            names = tuple(str(n) for n in z["names"])
            values = z["values"].astype(np.float32)
        if values.shape != (f_total, len(names)):
            raise ClipError(clip_dir, "motion.npz", f"values shape {values.shape}, expected ({f_total}, {len(names)})")
        motion = torch.from_numpy(values[start:end])

    s0 = round(start * spf)
    s1 = min(audio.shape[1], round(end * spf))
    audio_t = torch.from_numpy(np.ascontiguousarray(audio[:, s0:s1]))
    states = torch.tensor([STATE_NAMES.index(s) for s in meta.states[start:end]], dtype=torch.long)
    return Clip(path=clip_dir, meta=meta, video=video, audio=audio_t, refs=refs, motion=motion,
                motion_names=names, states=states)
