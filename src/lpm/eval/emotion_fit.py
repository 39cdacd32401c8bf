"""The bench's clip-level emotion decision, calibrated like the reaction rules.

A clip's emotion is read as the class with the largest mean probability over its frames, each class's mean first
multiplied by a weight (``clip_emotion``). The face reader, trained on frames, calls a weak emotion neutral: at a
third of its strength the rig raises the brows by 0.3 and rounds the mouth by 0.2, and the truth render's misses
were all such captions (docs/bench.md). ``fit_neutral_scale`` picks the weight of ``neutral`` (the others stay 1)
that reads the most calibration clips right, on the truth render of the data set's ``train`` clips (never the
bench's ``val`` / ``zeroshot`` clips); ties go to the scale nearest 1. ``lpm eval fit-emotion`` reads those clips
with the face reader and stores the weights in its checkpoint's metadata (``extra.emotion_weights``, weights
unchanged), where ``suites.load_instruments`` finds them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpm.errors import LpmError
from lpm.world.motion import EMOTIONS

# The neutral weights tried, 0.3 to 2.0 by 0.05 (the reaction rules' scale range, finer).
NEUTRAL_SCALES: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(35))
NEUTRAL = EMOTIONS.index("neutral")


def neutral_weights(scale: float) -> list[float]:
    """The per-class weights with neutral's at ``scale``, the others 1 (``EMOTIONS`` order)."""
    w = [1.0] * len(EMOTIONS)
    w[NEUTRAL] = float(scale)
    return w


def clip_emotion(frame_probs: np.ndarray, weights: Sequence[float] | None = None) -> str:
    """The emotion a clip shows: (F, len(EMOTIONS)) per-frame probabilities -> the class whose mean, times its
    weight (``None``: all 1), is largest."""
    mean = np.asarray(frame_probs, np.float64).mean(0)
    w = np.ones(len(EMOTIONS)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != mean.shape:
        raise ValueError(f"emotion weights: expected {len(EMOTIONS)} ({', '.join(EMOTIONS)}), got {w.shape[0]}")
    return EMOTIONS[int(np.argmax(mean * w))]


@dataclass
class NeutralFit:
    """The fitted scale, the calibration accuracy with it and with none (scale 1), and the clips used."""

    scale: float
    accuracy: float
    accuracy_unscaled: float
    clips: int

    @property
    def weights(self) -> list[float]:
        return neutral_weights(self.scale)


def fit_neutral_scale(clip_probs: np.ndarray, labels: Sequence[str]) -> NeutralFit:
    """The neutral weight that reads the most clips right.

    Args:
        clip_probs: (N, len(EMOTIONS)) each clip's mean per-frame probabilities.
        labels: (N,) each clip's true emotion (an ``EMOTIONS`` name).
    """
    probs = np.asarray(clip_probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(EMOTIONS) or len(probs) != len(labels) or not len(probs):
        raise ValueError(f"fit_neutral_scale: expected (N, {len(EMOTIONS)}) probabilities and N labels, got "
                         f"{probs.shape} and {len(labels)}")
    unknown = sorted(set(labels) - set(EMOTIONS))
    if unknown:
        raise ValueError(f"fit_neutral_scale: unknown emotions {unknown} (expected {', '.join(EMOTIONS)})")
    truth = np.array([EMOTIONS.index(e) for e in labels])

    def accuracy(scale: float) -> float:
        return float(((probs * np.array(neutral_weights(scale))).argmax(1) == truth).mean())

    best = max(NEUTRAL_SCALES, key=lambda s: (accuracy(s), -abs(s - 1.0)))
    return NeutralFit(best, accuracy(best), accuracy(1.0), len(probs))


def train_clip_video(data: str | Path, row: dict) -> np.ndarray:
    """A clip's truth render (F, H, W, 3) uint8, without decoding its audio or references (``suites.load_clip``
    decodes everything a system needs)."""
    from lpm.data.video import read_mp4

    path = Path(data) / row["path"] / "video.mp4"
    if not path.is_file():
        raise LpmError(f"{path}: no video to read")
    return read_mp4(path)


def train_clip_emotion(data: str | Path, row: dict) -> str:
    """A clip's caption emotion, as ``suites.load_clip`` gives it (``meta.json``'s ``emotion``, neutral if none)."""
    return str(json.loads((Path(data) / row["path"] / "meta.json").read_text()).get("emotion", "neutral"))


def fit_face_emotion(face_path: str | Path, data: str | Path, log=print) -> NeutralFit:
    """Read the truth render of ``data``'s train clips with the face reader at ``face_path`` (as the bench reads),
    fit the neutral weight and write it into that checkpoint's metadata."""
    from tqdm import tqdm

    from lpm.data.clip import read_manifest
    from lpm.eval.face import read_face
    from lpm.eval.train import FACE_KIND, load_face
    from lpm.training.checkpoint import load_checkpoint, save_checkpoint

    reader, _ = load_face(face_path)
    rows = [r for r in read_manifest(data) if r["split"] == "train"]
    if not rows:
        raise LpmError(f"{data}: no train clips to calibrate the emotion decision on")
    probs, labels = [], []
    for row in tqdm(rows, desc="read train clips", dynamic_ncols=True):
        probs.append(read_face(reader, train_clip_video(data, row)).emotion_probs.mean(0))
        labels.append(train_clip_emotion(data, row))
    fit = fit_neutral_scale(np.stack(probs), labels)
    state, meta = load_checkpoint(face_path, FACE_KIND)
    extra = {**meta["extra"], "emotion_weights": fit.weights,
             "emotion_fit": {"data": str(data), "clips": fit.clips, "accuracy": fit.accuracy,
                             "accuracy_unscaled": fit.accuracy_unscaled}}
    save_checkpoint(face_path, state, meta["config"], FACE_KIND, extra=extra)
    log(f"neutral weight {fit.scale} on {fit.clips} train clips: accuracy {fit.accuracy_unscaled:.3f} -> "
        f"{fit.accuracy:.3f}; written to {face_path}")
    return fit
