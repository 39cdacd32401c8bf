"""The audio encoder: log-mel steps -> per-frame audio tokens, strictly causal so it streams.

One encoder serves both streams (own speech and partner speech, LPM 1.0 arXiv 2604.07823, Sec. on audio
conditioning); a learned stream embedding tells them apart. Causality: every layer is a left-padded depthwise
convolution over steps, so tokens of frame ``f`` depend on mel steps of frames ``<= f`` only. The own-speech
lookahead the lip-sync needs is *not* here; it is declared once in the DiT's cross-attention window
(``DiTConfig.self_audio_lookahead_frames``). Streaming needs ``history_frames`` frames of mel before the first
frame whose tokens must be exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SELF_STREAM = 0  # the character's own voice (clip audio channel 0)
PARTNER_STREAM = 1  # the partner's voice (clip audio channel 1)


class CausalConvBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> causal depthwise conv (kernel K) -> GELU -> GLU projection."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.proj = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, Da) -> (B, S, Da)``; output step ``s`` sees input steps ``s-K+1 .. s``."""
        h = self.norm(x).transpose(1, 2)  # (B, Da, S)
        h = self.conv(nn.functional.pad(h, (self.kernel - 1, 0))).transpose(1, 2)  # (B, S, Da)
        a, b = self.proj(nn.functional.gelu(h)).chunk(2, dim=-1)
        return x + self.out(a * torch.sigmoid(b))


class AudioEncoder(nn.Module):
    """Log-mel ``(B, F, k, M)`` -> audio tokens ``(B, F, A, Da)``.

    Args:
        n_mels: M, mel bands per step.
        steps_per_frame: k, mel steps per video frame.
        dim: Da, token width.
        num_layers: causal conv blocks.
        kernel_steps: K, conv kernel in mel steps.
        tokens_per_frame: A, tokens per video frame (k must be divisible by A).
    """

    def __init__(
        self,
        n_mels: int,
        steps_per_frame: int,
        dim: int,
        num_layers: int,
        kernel_steps: int,
        tokens_per_frame: int,
    ) -> None:
        super().__init__()
        if steps_per_frame % tokens_per_frame:
            raise ValueError(
                f"steps_per_frame {steps_per_frame} is not divisible by tokens_per_frame {tokens_per_frame}"
            )
        self.steps_per_frame = steps_per_frame
        self.tokens_per_frame = tokens_per_frame
        self.kernel_steps = kernel_steps
        self.num_layers = num_layers
        self.input = nn.Linear(n_mels, dim)
        self.stream_embed = nn.Embedding(2, dim)  # SELF_STREAM, PARTNER_STREAM
        self.layers = nn.ModuleList(CausalConvBlock(dim, kernel_steps) for _ in range(num_layers))
        self.group = nn.Linear(dim * steps_per_frame // tokens_per_frame, dim)
        self.norm = nn.LayerNorm(dim)

    @property
    def history_frames(self) -> int:
        """Frames of past mel needed for the first output frame of a slice to equal the offline output."""
        return math.ceil(self.num_layers * (self.kernel_steps - 1) / self.steps_per_frame)

    def forward(self, mel: torch.Tensor, stream: int) -> torch.Tensor:
        """Args:
            mel: ``(B, F, k, M)`` log-mel (see ``lpm.audio.mel``).
            stream: ``SELF_STREAM`` or ``PARTNER_STREAM``.
        Returns:
            ``(B, F, A, Da)`` tokens; frame ``f`` depends on ``mel[:, :f+1]`` only.
        """
        b, f, k, m = mel.shape
        x = self.input(mel.reshape(b, f * k, m)) + self.stream_embed.weight[stream]  # (B, F*k, Da)
        for layer in self.layers:
            x = layer(x)
        x = x.reshape(b, f, self.tokens_per_frame, -1)  # (B, F, A, (k/A)*Da)
        return self.norm(self.group(x))  # (B, F, A, Da)
