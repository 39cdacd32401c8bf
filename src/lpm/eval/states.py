"""The state reader: speak / listen / idle per frame, from motion tracks alone (what the video shows).

A small dilated 1-D CNN over the probe's tracks (mouth, gaze, head, brows, smile, blinks; a receptive field of
about 2.5 s both ways): speech shows as a moving jaw, listening as a steady gaze at the partner with nods and
brow raises, idling as a wandering gaze. It is trained on the true motion of many world performances
(``lpm.world.synth.make_clip``, no rendering) with the probe's own errors added (``ReadingNoise``: gain, offset
and noise per channel, measured on the probe's reading of rendered clips of held-out identities), so it reads
probe tracks the way it was trained. ``lpm eval train-states`` makes it (``state_train.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lpm.data.clip import STATE_NAMES
from lpm.world.motion import MOTION_INDEX, MOTION_RANGE

STATE_KIND = "state_reader"
# Channels the reader looks at.
STATE_CHANNELS: tuple[str, ...] = ("jaw_open", "mouth_round", "mouth_wide", "gaze_x", "gaze_y", "head_pitch",
                                   "head_yaw", "head_roll", "brow_raise", "smile", "blink_l")
_IDX = [MOTION_INDEX[c] for c in STATE_CHANNELS]
_LO = np.array([MOTION_RANGE[c][0] for c in STATE_CHANNELS], np.float32)
_HI = np.array([MOTION_RANGE[c][1] for c in STATE_CHANNELS], np.float32)


@dataclass(frozen=True)
class StateReaderConfig:
    """Shape of the reader: dilated convolutions, ``kernel`` wide, one per dilation, ``width`` channels."""

    width: int = 32
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)


def scale_tracks(motion: np.ndarray) -> torch.Tensor:
    """(F, NUM_MOTION) rig units -> (1, len(STATE_CHANNELS), F) in [-1, 1] by each channel's range."""
    x = 2 * (motion[:, _IDX] - _LO) / (_HI - _LO) - 1
    return torch.from_numpy(np.ascontiguousarray(x.T, np.float32))[None]


class StateNet(nn.Module):
    """(B, C, F) scaled tracks -> (B, 3, F) state logits (speak, listen, idle)."""

    def __init__(self, cfg: StateReaderConfig = StateReaderConfig()):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c = len(STATE_CHANNELS)
        for d in cfg.dilations:
            # Replicate padding: a clip's edges hold still rather than fall to zero (which looks like a closed jaw).
            layers += [nn.Conv1d(c, cfg.width, cfg.kernel, padding=d * (cfg.kernel // 2), dilation=d,
                                 padding_mode="replicate"), nn.GELU()]
            c = cfg.width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(cfg.width, len(STATE_NAMES), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


@dataclass
class StateReader:
    """A trained ``StateNet``."""

    net: StateNet

    @torch.no_grad()
    def predict(self, motion: np.ndarray) -> np.ndarray:
        """(F, NUM_MOTION) -> (F,) int64 state index (0 speak, 1 listen, 2 idle)."""
        if len(motion) == 0:
            return np.zeros(0, np.int64)
        self.net.eval()
        return self.net(scale_tracks(motion))[0].argmax(0).numpy().astype(np.int64)


@dataclass
class ReadingNoise:
    """How a probe misreads each state channel: ``read = gain * true + offset + noise`` (noise std ``sigma``),
    fitted by least squares on probe readings of clips with known motion.

    Attributes:
        gain, offset, sigma: (len(STATE_CHANNELS),) in rig units.
    """

    gain: np.ndarray
    offset: np.ndarray
    sigma: np.ndarray

    @classmethod
    def fit(cls, read: list[np.ndarray], true: list[np.ndarray]) -> ReadingNoise:
        """Fit on per-clip (F, NUM_MOTION) readings and true motion."""
        r = np.concatenate(read)[:, _IDX].astype(np.float64)
        t = np.concatenate(true)[:, _IDX].astype(np.float64)
        gain, offset, sigma = [], [], []
        for k in range(len(STATE_CHANNELS)):
            a = np.stack([t[:, k], np.ones(len(t))], 1)
            (g, b), *_ = np.linalg.lstsq(a, r[:, k], rcond=None)
            gain.append(g)
            offset.append(b)
            sigma.append(np.std(r[:, k] - a @ np.array([g, b])))
        return cls(*(np.array(v, np.float32) for v in (gain, offset, sigma)))

    def apply(self, motion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(F, NUM_MOTION) true motion -> a plausible probe reading (the noise smoothed over ~1-3 frames, as the
        probe's errors of neighbouring frames are alike, then rescaled to ``sigma`` times 0.5-1.5)."""
        from scipy.ndimage import gaussian_filter1d

        out = motion.copy()
        noise = rng.normal(size=(len(motion), len(STATE_CHANNELS)))
        noise = gaussian_filter1d(noise, rng.uniform(0.5, 2.0), axis=0)
        noise /= noise.std(0, keepdims=True) + 1e-9
        scale = self.sigma * rng.uniform(0.5, 1.5, len(STATE_CHANNELS))
        out[:, _IDX] = self.gain * motion[:, _IDX] + self.offset + noise * scale
        return out
