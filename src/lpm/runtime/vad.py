"""Voice activity on the partner stream, for barge-in: the partner starts talking while the character speaks.

Backends: ``silero`` (silero-vad's bundled TorchScript model, offline; 32 ms windows at 16 kHz) or ``energy``
(an adaptive noise floor, the idea of ``lpm.world.audio_analysis.voice_activity`` made incremental). ``auto``
takes silero when it loads and falls back to energy otherwise (``backend`` says which one runs).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

WINDOW = 512  # samples per VAD decision at 16 kHz (silero's window; 32 ms)
SPEECH_PROB = 0.5  # silero probability above which a window is speech
ONSET_WINDOWS = 3  # consecutive speech windows (~96 ms) that make an onset (a click is not a barge-in)
RELEASE_WINDOWS = 8  # consecutive non-speech windows (~256 ms) that end a run
ENERGY_MARGIN_DB = 15.0  # energy backend: speech stands this far above the tracked noise floor
ENERGY_MIN_DB = -50.0  # and above this absolute level (dBFS)
FLOOR_RISE_DB_PER_S = 3.0  # the noise floor follows a rising level this slowly (it drops at once)


def load_silero():
    """silero-vad's model, or None when the package or its bundled weights are unavailable."""
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():  # its loader uses deprecated importlib / torch.jit APIs; not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            return load_silero_vad()
    except Exception:  # noqa: BLE001 - any failure to load means: use the energy backend
        return None


class VoiceActivity:
    """Incremental VAD: ``push(pcm)`` returns the media times (s) of speech onsets it completes.

    Args:
        backend: ``auto``, ``silero`` or ``energy``.
        sample_rate: must be 16000 for silero.
    """

    def __init__(self, backend: str = "auto", sample_rate: int = 16000) -> None:
        if backend not in ("auto", "silero", "energy"):
            raise ValueError(f"unknown VAD backend {backend!r}")
        self.sample_rate = sample_rate
        self.model = load_silero() if backend in ("auto", "silero") else None
        if backend == "silero" and self.model is None:
            raise RuntimeError("silero-vad is not installed or its model did not load")
        self.backend = "silero" if self.model is not None else "energy"
        self.buffer = np.zeros(0, np.float32)
        self.samples_seen = 0  # samples decided so far (whole windows)
        self.run = 0  # consecutive speech windows
        self.quiet = 0  # consecutive non-speech windows
        self.active = False
        self.floor_db = 0.0
        self.floor_init = False

    def _is_speech(self, window: np.ndarray) -> bool:
        if self.model is not None:
            with torch.no_grad():
                return float(self.model(torch.from_numpy(window), self.sample_rate)) > SPEECH_PROB
        level = 10 * math.log10(float(np.mean(window.astype(np.float64) ** 2)) + 1e-12)
        if not self.floor_init or level < self.floor_db:
            self.floor_db, self.floor_init = level, True
        else:
            self.floor_db += FLOOR_RISE_DB_PER_S * WINDOW / self.sample_rate
        return level > max(self.floor_db + ENERGY_MARGIN_DB, ENERGY_MIN_DB)

    def push(self, pcm: np.ndarray) -> list[float]:
        """Feed samples; returns the onset times (seconds of this stream) of speech runs that began."""
        self.buffer = np.concatenate([self.buffer, np.asarray(pcm, np.float32)])
        onsets = []
        while len(self.buffer) >= WINDOW:
            window, self.buffer = self.buffer[:WINDOW], self.buffer[WINDOW:]
            speech = self._is_speech(window)
            self.samples_seen += WINDOW
            if speech:
                self.run, self.quiet = self.run + 1, 0
                if not self.active and self.run >= ONSET_WINDOWS:
                    self.active = True
                    onsets.append((self.samples_seen - self.run * WINDOW) / self.sample_rate)
            else:
                self.run, self.quiet = 0, self.quiet + 1
                if self.active and self.quiet >= RELEASE_WINDOWS:
                    self.active = False
        return onsets

    def reset(self) -> None:
        if self.model is not None:
            self.model.reset_states()
        self.buffer = np.zeros(0, np.float32)
        self.run = self.quiet = 0
        self.active = False
