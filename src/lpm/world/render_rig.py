"""The rig the renderer draws: expression state derived from a motion row, and the 2.5D head projection.

The head is a unit sphere in its own local frame (x = viewer's right when facing front, y up, z out of the
face), rotated by yaw/pitch/roll and then squashed into an egg (wider cheeks, narrower chin) in the
image plane. Face features are decals on that sphere, so yaw slides and foreshortens them, pitch moves them
vertically and roll rotates them. ``HeadFrame.project`` maps local points to pixels; ``HeadFrame.unproject``
maps pixels back to the sphere for per-pixel shading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lpm.world.motion import MOTION_INDEX

# Light direction in view space (x right, y up, z towards the viewer): key light from the upper left.
LIGHT = np.array([-0.45, 0.55, 0.70], dtype=np.float32) / np.float32(np.linalg.norm([-0.45, 0.55, 0.70]))

# Framing, as fractions of the frame: the neck pivot sits below the head centre; the head is about half
# the frame height so the mouth spans several 8x8 latent cells at 128x128.
HEAD_CENTER_Y = 0.40
PIVOT_BELOW_HEAD = 0.95  # neck pivot distance below the head centre, in head half-heights
BREATH_FRAC = 0.012  # breath moves the shoulders this fraction of the frame each way
JAW_CHIN_DROP = 0.2  # a fully open jaw lengthens the lower face by this fraction


def _channel(pose: np.ndarray, name: str) -> float:
    return float(pose[MOTION_INDEX[name]])


def _clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, x))


@dataclass(frozen=True)
class FaceState:
    """Everything the renderer draws at one frame, after emotions are folded into the face channels."""

    jaw: float  # 0..1
    round: float  # 0..1
    wide: float  # 0..1
    smile: float  # -1..1, mouth corners
    lid_l: float  # upper lid closure of the character's left eye, 0 open .. 1 closed
    lid_r: float
    lower_lid: float  # lower lid raise (squint), 0..1
    widen: float  # surprise: upper lids pulled up, 0..1
    brow: float  # -1 frown .. 1 raised
    brow_inner: float  # + inner ends up (sad), - inner ends down and in (angry)
    gaze_x: float
    gaze_y: float
    flush: float  # angry redness 0..1
    cheek: float  # cheek raise / blush from smiling 0..1
    view_yaw: float  # degrees, + face towards the viewer's right (body and head combined)
    pitch: float  # degrees, + face up
    roll: float  # degrees, + top of head towards the viewer's right
    body_view_yaw: float  # degrees, the torso's yaw in the same sense as view_yaw
    breath: float  # -1..1


def face_state(pose: np.ndarray) -> FaceState:
    """Fold the emotion channels into the face channels of one motion row.

    Args:
        pose: (NUM_MOTION,) float, lpm.world.motion layout.
    """
    c = {name: _channel(pose, name) for name in MOTION_INDEX}
    happy, sad, surprised, angry = c["emo_happy"], c["emo_sad"], c["emo_surprised"], c["emo_angry"]
    smile = _clip(c["smile"] + 0.9 * happy - 0.8 * sad - 0.3 * angry, -1.0, 1.0)
    squint = 0.3 * happy + 0.15 * angry
    # body_yaw +90 shows the character's left side, i.e. the face turns towards the viewer's left, while
    # head_yaw +x turns it towards the viewer's right (both as documented in lpm.world.motion).
    body_view_yaw = -c["body_yaw"]
    return FaceState(
        jaw=_clip(c["jaw_open"] + 0.3 * surprised * (1.0 - c["jaw_open"])),
        round=_clip(c["mouth_round"] + 0.6 * surprised),
        wide=_clip(c["mouth_wide"] + 0.2 * happy + 0.25 * angry),
        smile=smile,
        lid_l=_clip(c["blink_l"] + squint * (1.0 - c["blink_l"])),
        lid_r=_clip(c["blink_r"] + squint * (1.0 - c["blink_r"])),
        lower_lid=_clip(0.6 * happy + 0.25 * angry),
        widen=_clip(surprised),
        brow=_clip(c["brow_raise"] + 0.9 * surprised - 0.7 * angry + 0.15 * sad, -1.0, 1.0),
        brow_inner=_clip(0.9 * sad - 0.9 * angry, -1.0, 1.0),
        gaze_x=_clip(c["gaze_x"], -1.0, 1.0),
        gaze_y=_clip(c["gaze_y"], -1.0, 1.0),
        flush=_clip(angry),
        cheek=_clip(max(smile, 0.0) + 0.3 * happy),
        view_yaw=body_view_yaw + c["head_yaw"],
        pitch=c["head_pitch"],
        roll=c["head_roll"],
        body_view_yaw=body_view_yaw,
        breath=_clip(c["breath"], -1.0, 1.0),
    )


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head rotation (intrinsic yaw, then pitch, then roll) as a (3, 3) matrix taking local to view."""
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    rz = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


@dataclass(frozen=True)
class HeadFrame:
    """Where the head is at one pose, in supersampled pixels."""

    cx: float
    cy: float
    a: float  # half-width in pixels
    b_up: float  # half-height above the centre
    b_lo: float  # half-height below the centre (grows as the jaw opens)
    taper: float  # chin narrowing
    tilt_cos: float  # in-plane tilt of the head's up axis (roll, or pitch seen from the side)
    tilt_sin: float
    m: np.ndarray  # (3, 3) local -> de-tilted view rotation

    def project(self, pts: np.ndarray, clamp_limb: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Project local head points to pixels.

        Args:
            pts: (N, 3) local points (unit sphere = the skull surface).
            clamp_limb: pin points that turned behind the sphere onto its outline, so a decal seen at a
                grazing angle folds onto the silhouette instead of showing through the head.
        Returns:
            xy (N, 2) float pixel coordinates, z (N,) view depth (+ towards the viewer).
        """
        v = pts @ self.m.T  # (N, 3) de-tilted view
        x, y, z = v[:, 0], v[:, 1], v[:, 2]
        if clamp_limb and z.min() < 0:
            behind = z < 0
            norm = np.sqrt(x * x + y * y) + 1e-9
            x = np.where(behind, x / norm, x)
            y = np.where(behind, y / norm, y)
        t = np.minimum(np.maximum(-y, 0.0), 1.0)
        ex = x * (self.a * (1.0 - self.taper * t * t))
        ey = y * self.b_up + np.minimum(y, 0.0) * (self.b_lo - self.b_up)
        c, s = self.tilt_cos, self.tilt_sin
        xy = np.empty((len(v), 2))
        xy[:, 0] = self.cx + ex * c + ey * s
        xy[:, 1] = self.cy + ex * s - ey * c
        return xy, z

    @property
    def light(self) -> np.ndarray:
        """The light direction in the de-tilted view frame, (3,)."""
        c, s = self.tilt_cos, self.tilt_sin
        lx, ly, lz = LIGHT
        return np.array([lx * c - ly * s, lx * s + ly * c, lz], dtype=np.float32)


def head_frame(
    state: FaceState, res_px: float, head_width: float, head_height: float, taper: float
) -> HeadFrame:
    """Place the head for one frame.

    Args:
        res_px: the drawing canvas side in pixels (supersampled).
        head_width, head_height: head half-size as fractions of the frame.
    """
    rot = rotation(state.view_yaw, state.pitch, state.roll)
    up = rot[:, 1]
    tilt = math.atan2(up[0], up[1])
    c, s = math.cos(tilt), math.sin(tilt)
    # T(tilt) rotates the de-tilted frame into view; m = T^T R.
    t = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    m = t.T @ rot
    b = head_height * res_px
    breath_dy = -0.5 * state.breath * BREATH_FRAC * res_px
    pivot_x, pivot_y = 0.5 * res_px, HEAD_CENTER_Y * res_px + PIVOT_BELOW_HEAD * b + breath_dy
    d = PIVOT_BELOW_HEAD * b
    return HeadFrame(
        cx=pivot_x + d * s,
        cy=pivot_y - d * c,
        a=head_width * res_px,
        b_up=b,
        b_lo=b * (1.0 + JAW_CHIN_DROP * state.jaw),
        taper=taper,
        tilt_cos=c,
        tilt_sin=s,
        m=m.astype(np.float64),
    )


def on_sphere(xy: np.ndarray, lift: float = 0.0) -> np.ndarray:
    """Lift face-plane points (x, y) onto the unit sphere's front, plus ``lift`` outwards.

    Args:
        xy: (N, 2). Returns (N, 3).
    """
    out = np.empty((len(xy), 3))
    out[:, :2] = xy
    out[:, 2] = np.sqrt(np.maximum(1.0 - xy[:, 0] ** 2 - xy[:, 1] ** 2, 0.0))
    if lift:
        out *= 1.0 + lift
    return out
