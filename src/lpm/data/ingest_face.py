"""Face tracking for ingest: mediapipe face detection picks and follows the main face, the face mesh measures it.

Per frame it gives the face box, a sharpness score and mesh measurements (head pose, mouth opening, eye
openness, expression features). Landmark indices are those of mediapipe's 478-point (refined) canonical face mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lpm.media.framing import square_crop

# Named points of the mediapipe face mesh (subject's left/right; the subject's right eye is on the image left).
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14
MOUTH_CORNER_R, MOUTH_CORNER_L = 61, 291
EYE_R_OUTER, EYE_R_INNER, EYE_R_UPPER, EYE_R_LOWER = 33, 133, 159, 145
EYE_L_OUTER, EYE_L_INNER, EYE_L_UPPER, EYE_L_LOWER = 263, 362, 386, 374
BROW_R_MID, BROW_L_MID = 105, 334
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1

# Tracking.
MIN_DETECTION_SCORE = 0.3  # stylised faces score 0.6-0.85 in the world; real faces higher
SAME_FACE_IOU = 0.3  # a detection overlapping the last main-face box this much is the same person
MESH_CONTEXT = 3.0  # the mesh sees a square this many detection-box sides wide around the face
MESH_INPUT = 256  # pixels of that square (the mesh model's own input is 192x192)
SHARPNESS_SIZE = 64  # the face is resampled to this many pixels before the Laplacian sharpness test

# Expression features (all relative to the inter-ocular distance, so face size drops out).
EXPRESSION_FEATURES = ("mouth_open", "mouth_width", "corner_lift", "brow_height", "eye_open")


@dataclass
class FaceTrack:
    """Per-frame face measurements of one source (F frames at 24 fps, analysis-pixel coordinates).

    Attributes:
        present: (F,) bool, the main face was detected and meshed.
        box: (F, 3) float32 detection box centre x, centre y and side (square), pixels.
        score: (F,) detection confidence.
        sharpness: (F,) variance of the Laplacian of the face, resampled to SHARPNESS_SIZE.
        pose: (F, 3) head yaw, pitch, roll in degrees (world sign conventions, see lpm.world.motion).
        mouth_open: (F,) lip gap / inter-ocular distance.
        eye_open: (F, 2) lid gap / eye width for the subject's left and right eye.
        expression: (F, len(EXPRESSION_FEATURES)) expression features.
    """

    present: np.ndarray
    box: np.ndarray
    score: np.ndarray
    sharpness: np.ndarray
    pose: np.ndarray
    mouth_open: np.ndarray
    eye_open: np.ndarray
    expression: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.present.shape[0])


@dataclass
class _Rows:
    """Per-frame rows while tracking, stacked into a FaceTrack at the end."""

    present: list[bool] = field(default_factory=list)
    box: list[np.ndarray] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    pose: list[np.ndarray] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    eyes: list[np.ndarray] = field(default_factory=list)
    expr: list[np.ndarray] = field(default_factory=list)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two square boxes given as (cx, cy, side)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[2] / 2, a[0] + a[2] / 2, a[1] + a[2] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[2] / 2, b[0] + b[2] / 2, b[1] + b[2] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / (a[2] ** 2 + b[2] ** 2 - inter + 1e-9)


def head_pose(pts: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll in degrees from 3D mesh points in pixels (x right, y down, z away from the camera).

    The face's axes are the eye line (right) and the chin-to-forehead line (up); their cross product is the
    face normal. +yaw turns the face to the viewer's right, +pitch tilts it up, +roll tilts the top of the
    head to the viewer's right (lpm.world.motion's conventions).

    Args:
        pts: (478, 3) landmarks in pixels.
    """
    p = pts * np.array([1.0, -1.0, -1.0])  # to x right, y up, z towards the viewer
    right = p[EYE_L_OUTER] - p[EYE_R_OUTER]
    right /= np.linalg.norm(right) + 1e-9
    up = p[FOREHEAD] - p[CHIN]
    up -= right * (up @ right)
    up /= np.linalg.norm(up) + 1e-9
    normal = np.cross(right, up)
    yaw = math.degrees(math.atan2(normal[0], normal[2]))
    pitch = math.degrees(math.atan2(normal[1], math.hypot(normal[0], normal[2])))
    roll = math.degrees(math.atan2(up[0], up[1]))
    return np.array([yaw, pitch, roll], np.float32)


def mesh_measures(pts: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mouth opening, eye openness (left, right) and the expression feature vector of one face.

    Args:
        pts: (478, 3) landmarks in pixels.
    Returns:
        (mouth_open, eye_open (2,), expression (len(EXPRESSION_FEATURES),)).
    """
    xy = pts[:, :2]
    iod = np.linalg.norm(xy[EYE_L_OUTER] - xy[EYE_R_OUTER]) + 1e-6

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(xy[a] - xy[b]))

    mouth_open = dist(LIP_UPPER_INNER, LIP_LOWER_INNER) / iod
    eye_l = dist(EYE_L_UPPER, EYE_L_LOWER) / (dist(EYE_L_OUTER, EYE_L_INNER) + 1e-6)
    eye_r = dist(EYE_R_UPPER, EYE_R_LOWER) / (dist(EYE_R_OUTER, EYE_R_INNER) + 1e-6)
    # Along the face's own up axis, so a tilted head does not read as a smile.
    up = xy[FOREHEAD] - xy[CHIN]
    up /= np.linalg.norm(up) + 1e-6
    lip_mid = (xy[LIP_UPPER_INNER] + xy[LIP_LOWER_INNER]) / 2
    corner_lift = float(((xy[MOUTH_CORNER_L] + xy[MOUTH_CORNER_R]) / 2 - lip_mid) @ -up) / iod
    eye_mid = (xy[EYE_L_UPPER] + xy[EYE_R_UPPER]) / 2
    brow_height = float(((xy[BROW_L_MID] + xy[BROW_R_MID]) / 2 - eye_mid) @ -up) / iod
    mouth_width = dist(MOUTH_CORNER_L, MOUTH_CORNER_R) / iod
    expression = np.array([mouth_open, mouth_width, -corner_lift, -brow_height, (eye_l + eye_r) / 2], np.float32)
    return mouth_open, np.array([eye_l, eye_r], np.float32), expression


def sharpness(frame: np.ndarray, box: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the face region, resampled to a fixed size (blur test)."""
    h, w = frame.shape[:2]
    cx, cy, side = box
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    gray = Image.fromarray(frame[y0:y1, x0:x1]).convert("L").resize((SHARPNESS_SIZE, SHARPNESS_SIZE),
                                                                     Image.Resampling.BILINEAR)
    g = np.asarray(gray, np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


class FaceTracker:
    """Follows the main face through a stream of frames; call ``update`` per frame, then ``track()``."""

    def __init__(self) -> None:
        import mediapipe as mp  # the ingest extra; imported here so the rest of lpm never needs it

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=MIN_DETECTION_SCORE)
        # refine_landmarks: the attention mesh keeps hold of stylised (anime, toon) faces that the plain one loses.
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=MIN_DETECTION_SCORE, min_tracking_confidence=0.5)
        self._last: np.ndarray | None = None
        self._rows = _Rows()

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def _pick(self, frame: np.ndarray) -> tuple[np.ndarray, float] | None:
        h, w = frame.shape[:2]
        res = self._detector.process(frame)
        if not res.detections:
            return None
        cands = []
        for det in res.detections:
            b = det.location_data.relative_bounding_box
            side = max(b.width * w, b.height * h)
            cands.append((np.array([(b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h, side]),
                          float(det.score[0])))
        if self._last is not None:
            # Stay with the same person while they remain visible; otherwise the largest face is the main one.
            best = max(cands, key=lambda c: _iou(c[0], self._last))
            if _iou(best[0], self._last) >= SAME_FACE_IOU:
                return best
        return max(cands, key=lambda c: c[0][2])

    def update(self, frame: np.ndarray) -> None:
        """Measure one (H, W, 3) uint8 RGB frame."""
        r = self._rows
        picked = self._pick(frame)
        pts = None
        if picked is not None:
            box, score = picked
            ctx = box[2] * MESH_CONTEXT
            crop = square_crop(frame, box[0], box[1], ctx, MESH_INPUT)
            res = self._mesh.process(crop)
            if res.multi_face_landmarks:
                lm = res.multi_face_landmarks[0].landmark
                rel = np.array([(p.x, p.y, p.z) for p in lm], np.float32)  # crop-relative, z in width units
                scale = ctx  # relative crop coordinates (z in crop widths) -> frame pixels
                pts = np.stack([box[0] - ctx / 2 + rel[:, 0] * scale, box[1] - ctx / 2 + rel[:, 1] * scale,
                                rel[:, 2] * scale], axis=1)
        if pts is None:
            self._last = None
            r.present.append(False)
            r.box.append(np.zeros(3, np.float32))
            r.score.append(0.0)
            r.sharpness.append(0.0)
            r.pose.append(np.zeros(3, np.float32))
            r.mouth.append(0.0)
            r.eyes.append(np.zeros(2, np.float32))
            r.expr.append(np.zeros(len(EXPRESSION_FEATURES), np.float32))
            return
        self._last = box
        mouth, eyes, expr = mesh_measures(pts)
        r.present.append(True)
        r.box.append(box.astype(np.float32))
        r.score.append(score)
        r.sharpness.append(sharpness(frame, box))
        r.pose.append(head_pose(pts))
        r.mouth.append(mouth)
        r.eyes.append(eyes)
        r.expr.append(expr)

    def track(self) -> FaceTrack:
        """Everything measured so far as arrays."""
        r = self._rows
        n_expr = len(EXPRESSION_FEATURES)
        return FaceTrack(
            present=np.array(r.present, bool),
            box=np.array(r.box, np.float32).reshape(-1, 3),
            score=np.array(r.score, np.float32),
            sharpness=np.array(r.sharpness, np.float32),
            pose=np.array(r.pose, np.float32).reshape(-1, 3),
            mouth_open=np.array(r.mouth, np.float32),
            eye_open=np.array(r.eyes, np.float32).reshape(-1, 2),
            expression=np.array(r.expr, np.float32).reshape(-1, n_expr),
        )
