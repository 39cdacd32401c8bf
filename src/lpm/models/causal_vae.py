"""``CausalVAE``: a small causal video VAE with temporal compression ``t_down`` (one latent frame per ``t_down``
video frames, as Wan's 3D VAE with 4), built for CPU training on the character world.

Factorised (2+1)D, every temporal operation causal:
- a per-frame 2D trunk (the ``LpmVAE`` levels: pixel-unshuffle stem, residual blocks, unshuffle/shuffle
  resampling) takes each frame to features at 1/d resolution and back;
- ``t_down`` consecutive frames' features are stacked on channels and projected to one latent frame (the
  decoder splits a latent frame back into ``t_down`` frames' features);
- residual blocks of causal 3D convolutions (``temporal_kernel`` latent frames: this one and the past, zero
  before the stream) mix latent frames, normalised per frame (a GroupNorm over time would see the future).

So latent frame ``i`` depends on video frames ``< (i + 1) t_down`` only, and decoded frames of latent ``i`` on
latents ``<= i``. The decoder's reach back is ``2 * temporal_blocks * (temporal_kernel - 1)`` latent frames:
``decode_chunk`` keeps that many past latents as its state, so a streamed decode equals the full decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpm.config import from_dict, to_dict
from lpm.models.codec_base import CodecError, LatentCodec, _check_latents, _check_video
from lpm.models.vae import Down, ResBlock, Up
from lpm.training.checkpoint import load_checkpoint, load_into, save_checkpoint

CHECKPOINT_KIND = "causal_vae"


@dataclass
class CausalVAEConfig:
    """Shape of the causal VAE; stored as the checkpoint's config."""

    latent_channels: int = 16  # C per latent position (Wan: 16)
    t_down: int = 4  # video frames per latent frame (1: a per-frame VAE of the same family)
    channels: tuple[int, ...] = (16, 32, 64)  # per-frame trunk widths from 1/2 to 1/d; d = 2 ** len
    blocks_per_level: int = 1  # residual blocks per trunk level (encoder and decoder)
    temporal_blocks: int = 2  # causal 3D residual blocks at the latent rate (encoder and decoder each)
    temporal_kernel: int = 2  # latent frames each causal 3D conv reads (this one and kernel - 1 past)
    norm_groups: int = 8  # GroupNorm groups (divide every width)
    logvar_clamp: float = 10.0  # clamp of the predicted log-variance

    def __post_init__(self) -> None:
        if self.t_down < 1 or self.temporal_kernel < 1 or self.temporal_blocks < 0:
            raise CodecError(f"causal VAE: t_down, temporal_kernel must be >= 1 and temporal_blocks >= 0, got "
                             f"{self.t_down}, {self.temporal_kernel}, {self.temporal_blocks}")
        for c in self.channels:
            if c % self.norm_groups:
                raise CodecError(f"causal VAE width {c} is not divisible by norm_groups={self.norm_groups}")

    @property
    def reach(self) -> int:
        """Past latent frames one side's temporal stack reads (two causal convs per block)."""
        return 2 * self.temporal_blocks * (self.temporal_kernel - 1)


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of ``(B, C, L, h, w)``."""
    b, _, length = x.shape[:3]
    y = module(x.transpose(1, 2).flatten(0, 1))  # (B*L, C', h', w')
    return y.unflatten(0, (b, length)).transpose(1, 2)  # (B, C', L, h', w')


class CausalConv3d(nn.Conv3d):
    """A ``(K, 3, 3)`` convolution zero padded on the past side of time only: output ``i`` sees inputs ``<= i``."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(c_in, c_out, (kernel, 3, 3), padding=(0, 1, 1))
        self.time_pad = kernel - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 0, 0, 0, self.time_pad, 0)))


class CausalTemporalBlock(nn.Module):
    """Per-frame GroupNorm -> SiLU -> causal 3D conv, twice, plus the input; starts as the identity."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, dim), nn.GroupNorm(groups, dim)
        self.conv1, self.conv2 = CausalConv3d(dim, dim, kernel), CausalConv3d(dim, dim, kernel)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, L, h, w) -> (B, C, L, h, w)``."""
        h = self.conv1(F.silu(per_frame(self.norm1, x)))
        h = self.conv2(F.silu(per_frame(self.norm2, h)))
        return x + h


def _trunk_down(ch: tuple[int, ...], blocks: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3 * 4, ch[0], 3, padding=1)]  # on 2x2-unshuffled pixels
    for i, c in enumerate(ch):
        layers += [ResBlock(c, c, groups) for _ in range(blocks)]
        if i + 1 < len(ch):
            layers.append(Down(c, ch[i + 1]))
    return nn.Sequential(*layers)


def _trunk_up(ch: tuple[int, ...], blocks: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in reversed(range(len(ch))):
        layers += [ResBlock(ch[i], ch[i], groups) for _ in range(blocks)]
        if i > 0:
            layers.append(Up(ch[i], ch[i - 1]))
    layers += [nn.GroupNorm(groups, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 3 * 4, 3, padding=1)]  # sub-pixel out
    return nn.Sequential(*layers)


class CausalVAE(nn.Module, LatentCodec):
    """The causal video VAE behind the ``LatentCodec`` interface (see the module docstring).

    ``posterior``/``decode_raw`` work on raw latents (training); ``encode``/``decode``/``decode_chunk`` on
    normalised ones (the codec contract).

    Args:
        cfg: the shape (``CausalVAEConfig``).
    """

    def __init__(self, cfg: CausalVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CausalVAEConfig()
        ch, g, t, top = cfg.channels, cfg.norm_groups, cfg.t_down, cfg.channels[-1]
        self.latent_channels, self.t_down, self.downsample = cfg.latent_channels, t, 2 ** len(ch)
        self.frame_encoder = _trunk_down(ch, cfg.blocks_per_level, g)
        self.fold = nn.Conv2d(t * top, top, 1)  # t frames' features -> one latent frame
        self.encoder_time = nn.Sequential(*(CausalTemporalBlock(top, cfg.temporal_kernel, g)
                                            for _ in range(cfg.temporal_blocks)))
        self.encoder_out = nn.Sequential(nn.GroupNorm(g, top), nn.SiLU(), nn.Conv2d(top, 2 * cfg.latent_channels, 3,
                                                                                   padding=1))
        self.decoder_in = nn.Conv2d(cfg.latent_channels, top, 3, padding=1)
        self.decoder_time = nn.Sequential(*(CausalTemporalBlock(top, cfg.temporal_kernel, g)
                                            for _ in range(cfg.temporal_blocks)))
        self.unfold = nn.Conv2d(top, t * top, 1)  # one latent frame -> t frames' features
        self.frame_decoder = _trunk_up(ch, cfg.blocks_per_level, g)
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))

    # Raw latents (training) ---------------------------------------------------------------------------
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            video: (B, F, 3, H, W) in [-1, 1], F a multiple of ``t_down``.
        Returns:
            (mean, logvar), each (B, F / t_down, C, H/d, W/d), raw.
        """
        _check_video(video, self.downsample, t_down=self.t_down)
        b, f = video.shape[:2]
        t, length = self.t_down, f // self.t_down
        h = self.frame_encoder(F.pixel_unshuffle(video.flatten(0, 1), 2))  # (B*F, c, h, w)
        h = self.fold(h.unflatten(0, (b * length, t)).flatten(1, 2))  # (B*L, c, h, w)
        h = h.unflatten(0, (b, length)).transpose(1, 2)  # (B, c, L, h, w)
        h = per_frame(self.encoder_out, self.encoder_time(h)).transpose(1, 2)  # (B, L, 2C, h, w)
        mean, logvar = h.chunk(2, dim=2)
        return mean, logvar.clamp(-self.cfg.logvar_clamp, self.cfg.logvar_clamp)

    def decode_raw(self, z: torch.Tensor, context: int = 0) -> torch.Tensor:
        """Decode raw latents; the first ``context`` latent frames are only read as the causal past.

        Args:
            z: (B, L, C, h, w) raw latents.
            context: leading latent frames that produce no output.
        Returns:
            (B, (L - context) * t_down, 3, h*d, w*d), unclamped.
        """
        b, t = z.shape[0], self.t_down
        h = self.decoder_time(per_frame(self.decoder_in, z.transpose(1, 2)))[:, :, context:]  # (B, c, L', h, w)
        length = h.shape[2]
        h = self.unfold(h.transpose(1, 2).flatten(0, 1))  # (B*L', t*c, h, w)
        h = h.unflatten(1, (t, -1)).flatten(0, 1)  # (B*L'*t, c, h, w)
        x = F.pixel_shuffle(self.frame_decoder(h), 2)  # (B*L'*t, 3, H, W)
        return x.unflatten(0, (b, length * t))

    # Codec contract -----------------------------------------------------------------------------------
    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_shift.view(1, 1, -1, 1, 1)) / self.latent_scale.view(1, 1, -1, 1, 1)

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_scale.view(1, 1, -1, 1, 1) + self.latent_shift.view(1, 1, -1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self._normalise(self.posterior(video)[0])  # the mean: deterministic latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.latent_channels)
        return self.decode_raw(self._denormalise(latents)).clamp(-1, 1)

    def decode_chunk(self, latents: torch.Tensor,
                     state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a chunk; ``state`` is the last ``cfg.reach`` latents before it (``(B, <= reach, C, h, w)``)."""
        _check_latents(latents, self.latent_channels)
        past = latents[:, :0] if state is None else state
        z = torch.cat([past, latents], dim=1)
        video = self.decode_raw(self._denormalise(z), context=past.shape[1]).clamp(-1, 1)
        return video, z[:, z.shape[1] - min(self.cfg.reach, z.shape[1]):]

    @torch.no_grad()
    def set_latent_stats(self, raw_means: torch.Tensor) -> None:
        """Per-channel shift and scale from raw posterior means ``(N, L, C, h, w)``."""
        z = raw_means.float().transpose(0, 2).flatten(1)  # (C, ...)
        self.latent_shift.copy_(z.mean(1))
        self.latent_scale.copy_(z.std(1).clamp_min(1e-6))

    # Checkpoints --------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Weights + ``CausalVAEConfig`` in one safetensors file (kind ``causal_vae``)."""
        return save_checkpoint(path, self.state_dict(), to_dict(self.cfg), kind=CHECKPOINT_KIND, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> CausalVAE:
        """Load a checkpoint written by ``save`` (strict)."""
        state, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
        model = cls(from_dict(CausalVAEConfig, meta["config"]))
        load_into(model, state, source=str(path))
        return model.to(device).eval()
