"""The latent codec interface: what the DiT, the runtime and the bench need from a VAE.

Tensor convention (ARCHITECTURE.md): video ``(B, F, 3, H, W)`` float in [-1, 1]; latents
``(B, L, C, H/d, W/d)`` with ``C = latent_channels``, ``d = downsample`` and ``L = F / t_down`` latent frames.
Latent frame ``i`` stands for video frames ``i * t_down .. (i + 1) * t_down - 1`` (1 today's per-frame VAE; 4 a
Wan-style causal video VAE). Latents leave ``encode`` already normalised (shifted and scaled to roughly unit
variance per channel), so diffusion code never sees a codec's raw latent statistics.

Implementations (``lpm.models.latent_codec.load_codec`` picks one): ``lpm.models.vae.LpmVAE`` (per frame),
``lpm.models.causal_vae.CausalVAE`` (temporal compression ``t_down``), and the diffusers adapters of
``lpm.models.diffusers_codec`` (``AutoencoderKL`` per frame, ``AutoencoderKLWan`` with ``t_down = 4``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from lpm.errors import LpmError


class CodecError(LpmError):
    """A codec that cannot be loaded or does not fit its input."""


class LatentCodec(ABC):
    """Pixels <-> latents, per latent frame or per chunk.

    ``decode_chunk`` is the streaming entry point: the runtime calls it once per generated chunk and threads
    the returned state into the next call. Per-frame codecs (``t_down = 1``, no temporal context) return
    ``None`` as the state and ``decode_chunk`` equals ``decode`` on any split of the frames; a temporally
    compressed codec must keep that property (causal decoding) through its state.
    """

    latent_channels: int
    downsample: int
    t_down: int = 1  # video frames per latent frame (temporal compression)

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video to normalised latents.

        Args:
            video: (B, F, 3, H, W) float in [-1, 1]; H and W divisible by ``downsample``, F by ``t_down``.
        Returns:
            (B, F / t_down, C, H/d, W/d) latents, roughly zero mean and unit variance per channel.
        """

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents to a video.

        Args:
            latents: (B, L, C, h, w).
        Returns:
            (B, L * t_down, 3, h*d, w*d) float in [-1, 1].
        """

    def decode_chunk(self, latents: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Decode one chunk of a stream; per-frame codecs carry no state between chunks.

        Args:
            latents: (B, L_chunk, C, h, w).
            state: what the previous call returned (``None`` for the first chunk).
        Returns:
            (video chunk (B, L_chunk * t_down, 3, H, W), state for the next chunk).
        """
        return self.decode(latents), state

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encode still images (reference images) as a held shot of one latent frame (``t_down`` video frames).

        Args:
            images: (B, 3, H, W) float in [-1, 1].
        Returns:
            (B, C, H/d, W/d) normalised latents.
        """
        return self.encode(images[:, None].expand(-1, self.t_down, -1, -1, -1))[:, 0]

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames of a video of ``video_frames`` frames (a whole number of ``t_down`` groups)."""
        if video_frames % self.t_down:
            raise CodecError(f"{video_frames} video frames are not a multiple of the codec's t_down {self.t_down}")
        return video_frames // self.t_down


def _check_video(video: torch.Tensor, downsample: int, what: str = "video", t_down: int = 1) -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise CodecError(f"{what}: expected (B, F, 3, H, W), got {tuple(video.shape)}")
    if video.shape[-1] % downsample or video.shape[-2] % downsample:
        raise CodecError(f"{what}: H and W must be divisible by {downsample}, got {tuple(video.shape[-2:])}")
    if video.shape[1] % t_down:
        raise CodecError(f"{what}: {video.shape[1]} frames are not a multiple of the codec's t_down {t_down}")


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    if latents.ndim != 5 or latents.shape[2] != channels:
        raise CodecError(f"latents: expected (B, F, {channels}, h, w), got {tuple(latents.shape)}")
