"""lpm's own VAE: a small per-frame convolutional autoencoder with 8x spatial compression.

Built for CPU real time (the Online pipeline decodes every frame at 24 fps on two cores), so:
- no attention and no temporal compression: frames are independent, chunked decode equals full decode;
- resolution changes by pixel (un)shuffle + 1x1 convolution, and no 3x3 convolution runs at full resolution:
  the encoder starts on 2x2-unshuffled pixels and the decoder ends with a 3x3 convolution to 12 channels
  followed by a 2x2 pixel shuffle (sub-pixel convolution, Shi et al. 2016);
- channel width grows as resolution falls, so every level costs about the same.

Latents are normalised per channel with ``latent_shift`` / ``latent_scale`` (buffers measured on training data
after training and saved in the checkpoint), so the DiT sees roughly unit-variance latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpm.config import from_dict, to_dict
from lpm.models.codec_base import CodecError, LatentCodec, _check_latents, _check_video
from lpm.training.checkpoint import load_checkpoint, load_into, save_checkpoint

CHECKPOINT_KIND = "vae"


@dataclass
class VAEConfig:
    """Shape of the VAE; stored as the checkpoint's config (the DiT reads ``latent_channels`` from it)."""

    # Channels of the latent per spatial position.
    latent_channels: int = 8
    # Width of each level, from 1/2 to the latent resolution; its length sets the compression: 2 ** len.
    channels: tuple[int, ...] = (32, 64, 128)
    # Residual blocks per level in the encoder and in the decoder.
    blocks_per_level: int = 1
    # Extra residual blocks at the latent resolution at the encoder's end (free at decode time).
    encoder_mid_blocks: int = 1
    # Extra residual blocks at the latent resolution at the decoder's start (each adds ~40% decode time).
    decoder_mid_blocks: int = 0
    # GroupNorm groups (must divide every width in ``channels``).
    norm_groups: int = 8
    # Clamp of the predicted log-variance, for a stable KL early in training.
    logvar_clamp: float = 10.0


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus the input (1x1 projection when the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        # Zero-init the last conv so each block starts as the identity (stable, fast early training).
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Down(nn.Module):
    """Halve the resolution: 2x2 pixel unshuffle (lossless) then a 1x1 conv to the next width."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(4 * c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.pixel_unshuffle(x, 2))


class Up(nn.Module):
    """Double the resolution: a 1x1 conv to 4x the next width then a 2x2 pixel shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, 4 * c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(x), 2)


class Encoder(nn.Module):
    """(N, 3, H, W) -> (N, 2*C, H/d, W/d): the posterior mean and log-variance."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(3 * 4, ch[0], 3, padding=1)  # on 2x2-unshuffled pixels, at H/2
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c, c, g) for _ in range(cfg.blocks_per_level)]
            if i + 1 < len(ch):
                layers.append(Down(c, ch[i + 1]))
        layers += [ResBlock(ch[-1], ch[-1], g) for _ in range(cfg.encoder_mid_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.pixel_unshuffle(x, 2))  # (N, ch0, H/2, W/2)
        h = self.body(h)  # (N, ch[-1], H/d, W/d)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(N, C, H/d, W/d) -> (N, 3, H, W), unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(ch[-1], ch[-1], g) for _ in range(cfg.decoder_mid_blocks)]
        for i in reversed(range(len(ch))):
            layers += [ResBlock(ch[i], ch[i], g) for _ in range(cfg.blocks_per_level)]
            if i > 0:
                layers.append(Up(ch[i], ch[i - 1]))
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, ch[0])
        self.conv_out = nn.Conv2d(ch[0], 3 * 4, 3, padding=1)  # sub-pixel output, shuffled to full resolution

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))  # (N, ch0, H/2, W/2)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2)  # (N, 3, H, W)


class LpmVAE(nn.Module, LatentCodec):
    """The per-frame VAE behind the ``LatentCodec`` interface.

    ``encode``/``decode`` work on videos and normalised latents (the codec contract); ``encode_frames`` /
    ``decode_frames`` work on raw latents of single frames and are what training uses.

    Args:
        cfg: the shape (``VAEConfig``).
    """

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or VAEConfig()
        for c in self.cfg.channels:
            if c % self.cfg.norm_groups:
                raise CodecError(f"VAE width {c} is not divisible by norm_groups={self.cfg.norm_groups}")
        self.latent_channels = self.cfg.latent_channels
        self.downsample = 2 ** len(self.cfg.channels)
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        # Per-channel latent statistics (identity until measured): z_norm = (z_raw - shift) / scale.
        self.register_buffer("latent_shift", torch.zeros(self.cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(self.cfg.latent_channels))

    # Raw, per frame (training) --------------------------------------------------------------------------
    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of single frames.

        Args:
            x: (N, 3, H, W) in [-1, 1].
        Returns:
            (mean, logvar), each (N, C, H/d, W/d), raw (not normalised).
        """
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-self.cfg.logvar_clamp, self.cfg.logvar_clamp)

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """Decode raw latents of single frames.

        Args:
            z: (N, C, h, w) raw latents.
        Returns:
            (N, 3, h*d, w*d), unclamped.
        """
        return self.decoder(z)

    # Codec contract: videos and normalised latents ------------------------------------------------------
    def _stat(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, self.downsample)
        b, f = video.shape[:2]
        mean, _ = self.encode_frames(video.flatten(0, 1))  # (B*F, C, h, w); the mean: deterministic latents
        z = (mean - self._stat(self.latent_shift)) / self._stat(self.latent_scale)
        return z.unflatten(0, (b, f))  # (B, F, C, h, w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.latent_channels)
        b, f = latents.shape[:2]
        z = latents.flatten(0, 1) * self._stat(self.latent_scale) + self._stat(self.latent_shift)
        return self.decode_frames(z).clamp(-1, 1).unflatten(0, (b, f))  # (B, F, 3, H, W)

    @torch.no_grad()
    def set_latent_stats(self, raw_latents: torch.Tensor) -> None:
        """Measure the per-channel shift and scale from raw latent means.

        Args:
            raw_latents: (N, C, h, w) raw posterior means of training frames.
        """
        z = raw_latents.float().transpose(0, 1).flatten(1)  # (C, N*h*w)
        self.latent_shift.copy_(z.mean(1))
        self.latent_scale.copy_(z.std(1).clamp_min(1e-6))

    # Checkpoints ----------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Weights + ``VAEConfig`` (as the checkpoint config) in one safetensors file."""
        return save_checkpoint(path, self.state_dict(), to_dict(self.cfg), kind=CHECKPOINT_KIND, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> LpmVAE:
        """Load a ``vae.safetensors`` written by ``save`` (strict: every key and shape must fit)."""
        state, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
        model = cls(from_dict(VAEConfig, meta["config"]))
        load_into(model, state, source=str(path))
        return model.to(device).eval()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
