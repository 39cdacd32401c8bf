"""Pictures as the user's camera or editor wrote them: orientation, size limits, animation, odd pixel modes.

- EXIF orientation is applied (a phone photo stored sideways comes out upright);
- the size is read from the header first: beyond ``max_pixels`` the picture is refused before any pixel is
  decoded (no decompression bombs); beyond ``work_pixels`` it is downscaled (JPEGs decode at a reduced scale);
- an animated picture (GIF, APNG, WebP) gives its first frame;
- transparency is composited on white; 16-bit and float greyscale are scaled to 8 bits, not clipped.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lpm.errors import MediaError

MAX_PICTURE_PIXELS = 8192 * 8192  # refused beyond this (read from the header)
WORK_PIXELS = 4096 * 4096  # downscaled to fit this: no reference needs more, and framing stays fast
EXIF_ORIENTATION = 0x0112


@dataclass
class Picture:
    """A decoded picture and what was done to it.

    Attributes:
        image: (H, W, 3) uint8 RGB, upright, within the work limit.
        stored_size: (width, height) as stored in the file (before orientation and downscale).
        orientation: the EXIF orientation applied (1: none).
        frames: frames in the file (an animated picture gives its first).
        scale: the downscale applied (1.0: none).
    """

    image: np.ndarray
    stored_size: tuple[int, int]
    orientation: int = 1
    frames: int = 1
    scale: float = 1.0


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, np.float32)
        top = 1.0 if im.mode == "F" and arr.max(initial=0) <= 1.0 else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        grey = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return np.asarray(im.convert("RGB"), np.uint8).copy()


def read_picture(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PICTURE_PIXELS,
                 work_pixels: int = WORK_PIXELS, formats: tuple[str, ...] | None = None) -> Picture:
    """Decode a picture file (a path or its bytes) within the limits (see the module docstring).

    Args:
        name: how errors name the picture (default: the path).
        formats: PIL format names allowed (None: any PIL reads).
    Raises:
        MediaError: missing, unreadable, truncated or too large.
    """
    if isinstance(source, bytes):
        name, fp = name or "picture", io.BytesIO(source)
    else:
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise MediaError(f"{name}: image file does not exist")
        fp = path
    try:
        with Image.open(fp, formats=formats) as im:
            w, h = im.size  # from the header: checked before any pixel is decoded
            if w * h > max_pixels:
                raise MediaError(f"{name}: picture of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            if w < 1 or h < 1:
                raise MediaError(f"{name}: picture of {w}x{h} pixels is empty")
            frames = int(getattr(im, "n_frames", 1) or 1)
            im.seek(0)
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            scale = min(1.0, (work_pixels / (w * h)) ** 0.5)
            if scale < 1.0 and im.format == "JPEG":
                im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))  # DCT-domain reduction
            im.load()
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            rgb = _to_rgb(upright)
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            IndexError, KeyError, TypeError, ZeroDivisionError, struct.error) as e:
        # PIL's parsers raise all of these on malformed files (found by fuzzing GIF and TIFF headers).
        raise MediaError(f"{name}: not a readable image: {type(e).__name__}: {e}") from None
    ph, pw = rgb.shape[:2]
    if pw * ph > work_pixels:
        s = (work_pixels / (pw * ph)) ** 0.5
        size = (max(1, int(pw * s)), max(1, int(ph * s)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS), np.uint8)
    return Picture(rgb, (w, h), orientation, frames, rgb.shape[1] / (h if orientation in (5, 6, 7, 8) else w))
