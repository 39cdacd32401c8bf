"""Log-mel features at an integer number of steps per video frame, from ``torch.stft``.

At 16 kHz and 24 fps a video frame lasts 16000 / 24 = 666.67 samples: no integer hop gives an integer
number of feature steps per frame (2000 = 2^4 * 5^3 has no factor 3, and three frames span exactly 2000
samples). We therefore zero-stuff the signal by ``upsample = 3`` (48 kHz, 2000 samples per frame) and take the
STFT there with ``hop = 2000 / steps_per_frame`` (500 for 4 steps per frame, i.e. 96 steps/s). Zero-stuffing
leaves the spectrum below 8 kHz untouched (``Y(w) = X(3w)``: the windowed DFT of the stuffed signal is
the DFT of the original samples under a window placed with 1/3-sample precision); its images lie above
8 kHz, where the mel bank (``f_max = 8000``) does not look. So each frame gets exactly ``steps_per_frame``
frame-aligned steps, without resampling filters and with nothing to carry between pushes but raw samples.

Windows are causal: step ``s`` covers the ``n_fft`` stuffed samples that *end* at ``(s + 1) * hop``, so the
features of frame ``f`` depend on audio up to the end of frame ``f`` only (the left edge is zero padded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lpm.config import ConfigError


@dataclass
class MelConfig:
    sample_rate: int = 16000  # input PCM rate (Hz), mono per stream
    fps: int = 24  # video frame rate; one frame = sample_rate / fps samples
    upsample: int = (
        3  # zero-stuffing factor; sample_rate * upsample must be divisible by fps * steps_per_frame
    )
    steps_per_frame: int = 4  # k: feature steps per video frame
    n_fft: int = 1600  # window / FFT length at the stuffed rate (1600 / 48 kHz = 33 ms)
    n_mels: int = 80  # M: mel bands
    f_min: float = 0.0  # lowest mel edge (Hz)
    f_max: float = 8000.0  # highest mel edge (Hz); at most sample_rate / 2 so images are never seen
    log_floor: float = 1e-6  # features are log(mel power + log_floor)

    def __post_init__(self) -> None:
        rate = self.sample_rate * self.upsample
        if rate % (self.fps * self.steps_per_frame):
            raise ConfigError(
                f"mel: sample_rate * upsample = {rate} is not divisible by fps * steps_per_frame = "
                f"{self.fps * self.steps_per_frame}; choose upsample for an integer number of steps"
            )
        if self.f_max > self.sample_rate / 2:
            raise ConfigError(f"mel: f_max {self.f_max} is above the Nyquist rate of the input")
        if self.n_fft < self.hop:
            raise ConfigError(f"mel: n_fft {self.n_fft} is shorter than the hop {self.hop}")

    @property
    def hop(self) -> int:
        """Hop in stuffed samples: ``sample_rate * upsample / (fps * steps_per_frame)``."""
        return self.sample_rate * self.upsample // (self.fps * self.steps_per_frame)

    @property
    def stuffed_samples_per_frame(self) -> int:
        return self.hop * self.steps_per_frame


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """Triangular HTK-mel filters over the stuffed-rate STFT bins. Returns ``(n_mels, n_fft // 2 + 1)``."""
    rate = cfg.sample_rate * cfg.upsample
    bins = torch.linspace(0, rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(
            _hz_to_mel(torch.tensor(cfg.f_min)).item(),
            _hz_to_mel(torch.tensor(cfg.f_max)).item(),
            cfg.n_mels + 2,
            dtype=torch.float64,
        )
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def zero_stuff(pcm: torch.Tensor, factor: int) -> torch.Tensor:
    """Insert ``factor - 1`` zeros after each sample. ``(B, T) -> (B, T * factor)``."""
    out = pcm.new_zeros(pcm.shape[0], pcm.shape[1], factor)
    out[..., 0] = pcm
    return out.reshape(pcm.shape[0], -1)  # (B, T * factor)


class LogMel(torch.nn.Module):
    """Causal, frame-aligned log-mel: ``(B, T)`` PCM at 16 kHz -> ``(B, F, k, M)``, F complete frames."""

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MelConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(self.cfg), persistent=False)

    def steps(self, stuffed: torch.Tensor) -> torch.Tensor:
        """Log-mel of every complete window of an already padded, stuffed signal.

        Args:
            stuffed: ``(B, L)`` with ``L >= n_fft``; window ``s`` is ``stuffed[:, s*hop : s*hop + n_fft]``.
        Returns:
            ``(B, S, M)`` with ``S = (L - n_fft) // hop + 1``.
        """
        spec = torch.stft(
            stuffed.float(),
            self.cfg.n_fft,
            hop_length=self.cfg.hop,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (B, n_fft//2+1, S)
        power = spec.real.square() + spec.imag.square()
        mel = torch.einsum("mf,bfs->bsm", self.filters, power)  # (B, S, M)
        return torch.log(mel + self.cfg.log_floor)

    def left_pad(self) -> int:
        """Zeros before the first stuffed sample so that step 0 ends at ``hop``."""
        return self.cfg.n_fft - self.cfg.hop

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        """Args:
            pcm: ``(B, T)`` float PCM in [-1, 1] at ``sample_rate``.
        Returns:
            ``(B, F, k, M)`` log-mel, ``F = floor(T * fps / sample_rate)`` complete frames.
        """
        k = self.cfg.steps_per_frame
        stuffed = zero_stuff(pcm, self.cfg.upsample)
        n_frames = stuffed.shape[1] // self.cfg.stuffed_samples_per_frame
        if n_frames == 0:
            return pcm.new_zeros(pcm.shape[0], 0, k, self.cfg.n_mels)
        stuffed = torch.nn.functional.pad(stuffed, (self.left_pad(), 0))
        usable = self.left_pad() + n_frames * self.cfg.stuffed_samples_per_frame
        feats = self.steps(stuffed[:, :usable])  # (B, F*k, M)
        return feats.reshape(pcm.shape[0], n_frames, k, self.cfg.n_mels)  # (B, F, k, M)


def frames_for_samples(cfg: MelConfig, num_samples: int) -> int:
    """Complete video frames covered by ``num_samples`` PCM samples."""
    return math.floor(num_samples * cfg.fps / cfg.sample_rate)


def per_latent_frame(mel: torch.Tensor, t_down: int) -> torch.Tensor:
    """Group video frames' features by latent frame (a codec compressing ``t_down`` video frames into one).

    Args:
        mel: ``(B, F, k, M)`` features of ``F`` video frames, ``F`` a multiple of ``t_down``.
        t_down: video frames per latent frame.
    Returns:
        ``(B, F / t_down, t_down * k, M)``: latent frame ``i`` holds the steps of video frames
        ``i * t_down .. (i + 1) * t_down - 1`` in order, so grouping commutes with slicing at latent frames.
    """
    b, f, k, m = mel.shape
    if f % t_down:
        raise ValueError(f"mel: {f} video frames are not a whole number of latent frames of {t_down}")
    return mel.reshape(b, f // t_down, t_down * k, m)  # (B, F/t, t*k, M)
