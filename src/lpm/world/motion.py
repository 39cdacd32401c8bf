"""The rig's motion parameters: one named float per channel, one row per video frame.

This is the ground-truth layout written to ``motion.npz`` and read by the renderer, the controller and the
motion probe. Channel ranges are part of the contract:

- ``jaw_open``, ``mouth_round``, ``mouth_wide``: 0..1 (0 = closed / neutral).
- ``blink_l``, ``blink_r``: 0..1 (1 = eyelid fully closed). ``_l`` is the character's own left eye.
- ``gaze_x``, ``gaze_y``: -1..1 (+x = towards the viewer's right, +y = up).
- ``head_yaw``, ``head_pitch``, ``head_roll``: degrees, relative to the body. +yaw turns the face towards the
  viewer's right, +pitch tilts the face up (a nod is pitch going down then back), +roll tilts the top of the head
  towards the viewer's right.
- ``brow_raise``: -1..1 (-1 = frown, +1 = raised). ``smile``: -1..1 (-1 = frown at the mouth corners).
- ``body_yaw``: degrees in -180..180. 0 = front, +90 = the body turned to show its left side ("left" view),
  -90 = "right" view, +-180 = back.
- ``breath``: -1..1, the phase of the breathing sway (shoulders rise and fall).
- ``emo_happy``, ``emo_sad``, ``emo_surprised``, ``emo_angry``: 0..1 intensity of each emotion; all zero = neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOTION_NAMES: tuple[str, ...] = (
    "jaw_open",
    "mouth_round",
    "mouth_wide",
    "blink_l",
    "blink_r",
    "gaze_x",
    "gaze_y",
    "head_yaw",
    "head_pitch",
    "head_roll",
    "brow_raise",
    "smile",
    "body_yaw",
    "breath",
    "emo_happy",
    "emo_sad",
    "emo_surprised",
    "emo_angry",
)
MOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(MOTION_NAMES)}
NUM_MOTION = len(MOTION_NAMES)

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprised", "angry")

# Body views used for references, as body_yaw in degrees.
BODY_VIEWS: dict[str, float] = {"front": 0.0, "left": 90.0, "right": -90.0, "back": 180.0}

# Per-frame behaviour states, as stored in meta.json.
STATES: tuple[str, ...] = ("speak", "listen", "idle")

# Valid range of each channel (lo, hi), used to clip controller output and to validate clips.
MOTION_RANGE: dict[str, tuple[float, float]] = {
    "jaw_open": (0.0, 1.0),
    "mouth_round": (0.0, 1.0),
    "mouth_wide": (0.0, 1.0),
    "blink_l": (0.0, 1.0),
    "blink_r": (0.0, 1.0),
    "gaze_x": (-1.0, 1.0),
    "gaze_y": (-1.0, 1.0),
    "head_yaw": (-45.0, 45.0),
    "head_pitch": (-30.0, 30.0),
    "head_roll": (-25.0, 25.0),
    "brow_raise": (-1.0, 1.0),
    "smile": (-1.0, 1.0),
    "body_yaw": (-180.0, 180.0),
    "breath": (-1.0, 1.0),
    "emo_happy": (0.0, 1.0),
    "emo_sad": (0.0, 1.0),
    "emo_surprised": (0.0, 1.0),
    "emo_angry": (0.0, 1.0),
}


def neutral_pose(frames: int = 1) -> np.ndarray:
    """A motion array at rest: every channel 0 (eyes open, mouth closed, facing front).

    Returns:
        (frames, NUM_MOTION) float32.
    """
    return np.zeros((frames, NUM_MOTION), dtype=np.float32)


def emotion_vector(emotion: str, intensity: float = 1.0) -> np.ndarray:
    """The four ``emo_*`` channels for one emotion; ``neutral`` gives zeros.

    Returns:
        (4,) float32.
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    out = np.zeros(4, dtype=np.float32)
    if emotion != "neutral":
        out[EMOTIONS.index(emotion) - 1] = float(np.clip(intensity, 0.0, 1.0))
    return out


def clip_to_range(motion: np.ndarray) -> np.ndarray:
    """Clip every channel of a (F, NUM_MOTION) array to its valid range (returns a new array)."""
    lo = np.array([MOTION_RANGE[n][0] for n in MOTION_NAMES], dtype=np.float32)
    hi = np.array([MOTION_RANGE[n][1] for n in MOTION_NAMES], dtype=np.float32)
    return np.clip(motion, lo, hi).astype(np.float32)


@dataclass(frozen=True)
class Pose:
    """One frame's motion as named fields (a readable view of a row of the motion array)."""

    values: np.ndarray  # (NUM_MOTION,) float32

    def __getattr__(self, name: str) -> float:
        idx = MOTION_INDEX.get(name)
        if idx is None:
            raise AttributeError(name)
        return float(self.values[idx])
