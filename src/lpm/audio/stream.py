"""Streaming log-mel: push PCM in pieces of any length, get exactly the offline features frame by frame.

The Session owns one ``MelStream`` per audio stream (own speech, partner). Only the last ``n_fft - hop``
stuffed samples and the steps of an unfinished frame are kept, so memory is constant in session length.
"""

from __future__ import annotations

import torch

from lpm.audio.mel import LogMel, MelConfig, zero_stuff


class MelStream:
    """Incremental ``LogMel``: ``push(pcm)`` returns the features of the frames completed by ``pcm``.

    Args:
        cfg: the mel configuration (must equal the one the model was trained with).
        batch_size: number of parallel streams ``B``.
    """

    def __init__(self, cfg: MelConfig | None = None, batch_size: int = 1, device: str | torch.device = "cpu"):
        self.mel = LogMel(cfg).to(device)
        self.cfg = self.mel.cfg
        self.batch_size = batch_size
        # Stuffed samples not yet consumed by a window; starts with the causal left padding.
        self._buffer = torch.zeros(batch_size, self.mel.left_pad(), device=device)
        self._steps = torch.zeros(
            batch_size, 0, self.cfg.n_mels, device=device
        )  # steps of an unfinished frame
        self.frames_emitted = 0

    def push(self, pcm: torch.Tensor) -> torch.Tensor:
        """Args:
            pcm: ``(B, n)`` new PCM samples (any ``n >= 0``).
        Returns:
            ``(B, f, k, M)`` features of the ``f >= 0`` frames completed by these samples.
        """
        cfg = self.cfg
        self._buffer = torch.cat([self._buffer, zero_stuff(pcm.to(self._buffer), cfg.upsample)], dim=1)
        n_steps = (
            (self._buffer.shape[1] - cfg.n_fft) // cfg.hop + 1 if self._buffer.shape[1] >= cfg.n_fft else 0
        )
        if n_steps > 0:
            new = self.mel.steps(self._buffer[:, : cfg.n_fft + (n_steps - 1) * cfg.hop])  # (B, S, M)
            self._buffer = self._buffer[:, n_steps * cfg.hop :]
            self._steps = torch.cat([self._steps, new], dim=1)
        k = cfg.steps_per_frame
        n_frames = self._steps.shape[1] // k
        out = self._steps[:, : n_frames * k].reshape(self.batch_size, n_frames, k, cfg.n_mels)  # (B, f, k, M)
        self._steps = self._steps[:, n_frames * k :]
        self.frames_emitted += n_frames
        return out


__all__ = ["MelConfig", "MelStream"]
