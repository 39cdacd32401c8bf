"""Frame a picture like the training data: the face found, head and shoulders cropped at the world's framing.

The world renderer (and ``lpm data ingest``, which crops real footage to match it) shows the face detector's
box at FACE_BOX_FRACTION of the frame side, its centre FACE_CENTRE_Y from the top, centred in x. A user's
photo (full body, off-centre, a wide shot) is cropped to the same: a square of side box / FACE_BOX_FRACTION
around the largest detected face, edge-replicated where it passes the picture's border (as ingest does).
Characters without a detectable face keep the centre square.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

# Framing of the world renderer, measured by mediapipe's face detector on world clips (photo and toon3d).
FACE_BOX_FRACTION = 0.32
FACE_CENTRE_Y = 0.455
DETECT_MAX_SIDE = 1024  # pictures are searched for a face at most this large (longest side)
MIN_FACE_SCORE = 0.5
# Tiles of 1/2 ... 1/6 of the longer side (half overlapping) searched when no face is found in the whole picture:
# a world frame pasted at 120 px into a 1000 x 700 picture is found in 6 of 18 cases without the 1/6 grid, 18 with.
TILE_GRIDS = (2, 3, 4, 6)
MIN_TILE = 96  # pixels: smaller tiles hold no face the whole-picture search missed
REFINE_SIZE = 256  # the world-framed crop the face box is re-measured on, pixels
REFINE_STEPS = 2
MAX_CROP_SIDE = 1024  # the framed picture is at most this many pixels (the engine downsizes it anyway)


@dataclass
class Framing:
    """How a picture was framed (source pixels of the picture as decoded, upright).

    Attributes:
        method: "face" (cropped around the detected face), "centre" (no face found: the centre square) or
            "none" (kept as given: ``--no-frame``).
        crop: (centre x, centre y, side) of the square taken.
        face: (centre x, centre y, side) of the detected face box, or None.
        score: the detector's confidence (0 without a face).
        size: (width, height) of the picture.
    """

    method: str
    crop: tuple[float, float, float]
    face: tuple[float, float, float] | None
    score: float
    size: tuple[int, int]

    def to_json(self) -> dict:
        out = asdict(self)
        out["crop"] = [round(v, 1) for v in self.crop]
        out["face"] = [round(v, 1) for v in self.face] if self.face is not None else None
        out["score"] = round(self.score, 3)
        return out


def square_crop(frame: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A square of ``side`` pixels centred at (cx, cy), edge-replicated outside the frame, resized to size.

    Returns:
        (size, size, 3) uint8.
    """
    h, w = frame.shape[:2]
    half = side / 2
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    # Cut the part of the frame the square touches (one pixel of margin for the filter), edge-pad only that.
    ix0, iy0 = int(math.floor(max(0.0, x0))), int(math.floor(max(0.0, y0)))
    ix1, iy1 = int(math.ceil(min(float(w), x1))), int(math.ceil(min(float(h), y1)))
    ix1, iy1 = max(ix1, ix0 + 1), max(iy1, iy0 + 1)
    region = frame[min(iy0, h - 1): iy1, min(ix0, w - 1): ix1]
    pad_l, pad_t = int(math.ceil(max(0.0, -x0))) + 1, int(math.ceil(max(0.0, -y0))) + 1
    pad_r, pad_b = int(math.ceil(max(0.0, x1 - w))) + 1, int(math.ceil(max(0.0, y1 - h))) + 1
    region = np.pad(region, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="edge")
    ox, oy = min(ix0, w - 1) - pad_l, min(iy0, h - 1) - pad_t  # frame coordinates of region's (0, 0)
    box = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)
    return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BILINEAR, box=box), np.uint8)


def world_crop(face: tuple[float, float, float]) -> tuple[float, float, float]:
    """The square (cx, cy, side) that puts a face box (cx, cy, side) where the world's framing has it."""
    fx, fy, fside = face
    side = fside / FACE_BOX_FRACTION
    return fx, fy + (0.5 - FACE_CENTRE_Y) * side, side


def _detections(detectors, image: np.ndarray, model: int) -> list[tuple[tuple[float, float, float], float]]:
    """Every face one mediapipe model finds in a picture: ((cx, cy, side) in its pixels, score)."""
    h, w = image.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = image
    if scale < 1.0:
        small = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                         Image.Resampling.BILINEAR), np.uint8)
    sh, sw = small.shape[:2]
    res = detectors[model].process(np.ascontiguousarray(small))
    out = []
    for det in res.detections or []:
        b = det.location_data.relative_bounding_box
        side = max(b.width * sw, b.height * sh) / scale
        out.append((((b.xmin + b.width / 2) * sw / scale, (b.ymin + b.height / 2) * sh / scale, side),
                    float(det.score[0])))
    return out


def _search(detectors, image: np.ndarray) -> tuple[tuple[float, float, float], float] | None:
    """The largest face in the whole picture (short-range model, then full-range), else in overlapping tiles
    (a small face in a wide shot is below what either model sees in the whole picture)."""
    for model in (0, 1):
        found = _detections(detectors, image, model)
        if found:
            return max(found, key=lambda d: d[0][2])
    h, w = image.shape[:2]
    for grid in TILE_GRIDS:
        side = min(h, w, max(h, w) / grid)
        if side < MIN_TILE:
            break
        step = side / 2
        found = []
        for y0 in np.arange(0, max(1.0, h - side + 1), step):
            for x0 in np.arange(0, max(1.0, w - side + 1), step):
                tile = image[int(y0): int(y0 + side), int(x0): int(x0 + side)]
                found += [((x0 + b[0], y0 + b[1], b[2]), s) for b, s in _detections(detectors, tile, 0)]
        if found:
            return max(found, key=lambda d: d[0][2])
    return None


def detect_face(image: np.ndarray) -> tuple[tuple[float, float, float], float] | None:
    """The largest face mediapipe finds, measured the way the world's framing was: ((cx, cy, side), score).

    The face is searched for in the whole picture, then in tiles; its box is then re-measured by the
    short-range model on the world-framed crop around it (REFINE_STEPS times), where that model saw the world
    faces FACE_BOX_FRACTION and FACE_CENTRE_Y were measured on. None without a face, or without mediapipe
    (the ingest extra).

    Args:
        image: (H, W, 3) uint8 RGB.
    """
    try:
        import mediapipe as mp
    except ImportError:
        return None
    fd = mp.solutions.face_detection
    detectors = [fd.FaceDetection(model_selection=m, min_detection_confidence=MIN_FACE_SCORE) for m in (0, 1)]
    try:
        found = _search(detectors, image)
        if found is None:
            return None
        box, score = found
        for _ in range(REFINE_STEPS):
            cx, cy, side = world_crop(box)
            crop = square_crop(image, cx, cy, side, REFINE_SIZE)
            near = _detections(detectors, crop, 0)
            if not near:
                break
            (bx, by, bs), score = max(near, key=lambda d: d[0][2])
            k = side / REFINE_SIZE  # crop pixels -> picture pixels
            box = (cx - side / 2 + bx * k, cy - side / 2 + by * k, bs * k)
        return box, score
    finally:
        for d in detectors:
            d.close()


def frame_picture(image: np.ndarray, frame: bool = True) -> tuple[np.ndarray, Framing]:
    """Crop a picture to the world's framing (see the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.
        frame: False keeps the picture as given (the engine centre-crops it, as before).
    Returns:
        ((S, S, 3) uint8 with S = min(crop side, MAX_CROP_SIDE), or the picture itself when ``frame`` is False;
        how it was framed).
    """
    h, w = image.shape[:2]
    if not frame:
        return image, Framing("none", (w / 2, h / 2, float(min(w, h))), None, 0.0, (w, h))
    found = detect_face(image)
    if found is None:
        crop = (w / 2, h / 2, float(min(w, h)))
        framing = Framing("centre", crop, None, 0.0, (w, h))
    else:
        face, score = found
        crop = world_crop(face)
        framing = Framing("face", crop, face, score, (w, h))
    size = max(8, min(MAX_CROP_SIDE, round(crop[2])))
    return square_crop(image, crop[0], crop[1], crop[2], size), framing


def frame_references(pictures: dict[str, np.ndarray],
                     frame: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Framing]]:
    """Each reference (kind -> (H, W, 3) uint8) framed by ``frame_picture``; returns (images, framing per kind)."""
    images, framing = {}, {}
    for kind, picture in pictures.items():
        images[kind], framing[kind] = frame_picture(picture, frame)
    return images, framing


def debug_image(image: np.ndarray, framing: Framing) -> np.ndarray:
    """The picture with the crop square (green) and the detected face box (red) drawn on it.

    Returns:
        (H, W, 3) uint8.
    """
    from PIL import ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 300))
    cx, cy, side = framing.crop
    draw.rectangle([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], outline=(0, 220, 0), width=width)
    if framing.face is not None:
        fx, fy, fs = framing.face
        draw.rectangle([fx - fs / 2, fy - fs / 2, fx + fs / 2, fy + fs / 2], outline=(230, 0, 0), width=width)
    return np.asarray(im, np.uint8)
