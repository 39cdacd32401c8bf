"""The state reader: speak / listen / idle per frame, from motion tracks alone (what the video shows).

A softmax regression over windowed statistics of the tracks (mouth movement, gaze steadiness, head motion),
fitted on the ground-truth motion of the training clips with noise at the probe's error level added, so it
reads probe tracks the way it was fitted. Its accuracy on the ``truth`` system's probe tracks is the ceiling of
``state_acc``: listening and idling differ on screen only by gaze and reactions, so the ceiling is below 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from lpm.world.motion import MOTION_INDEX, MOTION_NAMES

# Centred window (frames) of the statistics: half a second either way, about one syllable train or one saccade.
STATE_WINDOW = 25
FIT_STEPS = 200
# Channels the reader looks at.
STATE_CHANNELS: tuple[str, ...] = ("jaw_open", "mouth_round", "mouth_wide", "gaze_x", "gaze_y", "head_pitch",
                                   "head_yaw", "brow_raise")


def state_features(motion: np.ndarray, window: int = STATE_WINDOW) -> np.ndarray:
    """Per-frame features: windowed mean, absolute mean and standard deviation of each state channel.

    Args:
        motion: (F, NUM_MOTION) rig units.
    Returns:
        (F, 3 * len(STATE_CHANNELS)) float32.
    """
    x = motion[:, [MOTION_INDEX[c] for c in STATE_CHANNELS]].astype(np.float64)  # (F, C)
    mean = uniform_filter1d(x, window, axis=0, mode="nearest")
    absmean = uniform_filter1d(np.abs(x), window, axis=0, mode="nearest")
    sq = uniform_filter1d(x * x, window, axis=0, mode="nearest")
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    return np.concatenate([mean, absmean, std], axis=1).astype(np.float32)


@dataclass
class StateReader:
    """Softmax regression from ``state_features`` to speak / listen / idle."""

    mean: np.ndarray  # (D,) feature standardisation
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (D, 3)
    bias: np.ndarray  # (3,)

    def predict(self, motion: np.ndarray) -> np.ndarray:
        """(F, NUM_MOTION) -> (F,) int64 state index (0 speak, 1 listen, 2 idle)."""
        z = (state_features(motion) - self.mean) / self.scale
        return (z @ self.weight + self.bias).argmax(1).astype(np.int64)


def fit_state_reader(motions: list[np.ndarray], states: list[np.ndarray], noise: dict[str, float],
                     seed: int = 0) -> StateReader:
    """Fit on true motion plus Gaussian noise of the probe's per-channel error.

    Args:
        motions: per clip (F, NUM_MOTION); states: per clip (F,) int64; noise: channel -> std in rig units.
    """
    rng = np.random.default_rng(seed)
    sigma = np.array([noise.get(n, 0.0) for n in MOTION_NAMES], np.float32)
    feats = [state_features(m + rng.normal(size=m.shape).astype(np.float32) * sigma) for m in motions]
    x = np.concatenate(feats)
    y = np.concatenate(states)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / scale)
    yt = torch.from_numpy(y)
    # Classes are unbalanced (speech dominates); weight them equally so listen vs idle is not ignored.
    counts = np.bincount(y, minlength=3).astype(np.float32)
    cw = torch.from_numpy(counts.sum() / (3 * np.maximum(counts, 1)))
    lin = torch.nn.Linear(x.shape[1], 3)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt, weight=cw) + 1e-3 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return StateReader(mean, scale, lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
