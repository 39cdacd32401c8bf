"""Pretrained diffusers VAEs behind the ``LatentCodec`` interface, loaded from local folders (never downloaded).

- ``DiffusersVAEAdapter``: an image ``AutoencoderKL`` (SD, SDXL, FLUX VAEs), used per frame (``t_down = 1``).
- ``WanVAEAdapter``: Wan's causal video VAE ``AutoencoderKLWan`` (``t_down = 4``), streamed chunk by chunk.

Wan's clock differs from lpm's at the stream's start only: Wan encodes ``1 + 4 (L - 1)`` frames to ``L`` latent
frames (its first latent frame holds one frame), lpm's latent frame ``i`` stands for video frames ``4i .. 4i+3``.
The adapter maps one onto the other by letting Wan's first latent frame stand for video frame 3 (``encode`` skips
frames 0-2) and holding its decoded frame over frames 0-2 (``decode``): every later frame is Wan's own, and
``encode``/``decode`` take and give ``4 L`` frames as the interface requires.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from lpm.models.codec_base import CodecError, LatentCodec, _check_latents, _check_video

WAN_CLASS = "AutoencoderKLWan"


def _diffusers() -> Any:
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        raise CodecError(
            "the diffusers VAE adapters need the 'diffusers' package: pip install diffusers (or '.[scale]')"
        ) from None


def _getter(cfg: Any):
    return cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))


def read_folder_config(folder: Path) -> tuple[Path, dict]:
    """The VAE folder (a pipeline folder's ``vae/``) and its ``config.json`` ({} when absent)."""
    if not folder.is_dir():
        raise CodecError(f"diffusers VAE folder {folder} does not exist")
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a whole pipeline folder: use its VAE
    path = folder / "config.json"
    try:
        return folder, (json.loads(path.read_text()) if path.is_file() else {})
    except json.JSONDecodeError as e:
        raise CodecError(f"{path}: invalid JSON: {e}") from None


class _LazyDiffusersModel:
    """A diffusers model from a local folder, loaded on first use with ``local_files_only=True``."""

    class_name = "AutoencoderKL"

    def __init__(self, folder: str | Path | None, device: str | torch.device, dtype: torch.dtype,
                 model: Any) -> None:
        if folder is None and model is None:
            raise CodecError(f"{type(self).__name__} needs a folder or a model")
        self.device = torch.device(device)
        self.dtype = dtype
        self._model = model
        self.folder = None
        if model is not None:
            self._read_config(model.config)
        else:
            self.folder, cfg = read_folder_config(Path(folder))
            # Shape and scaling come from the folder's config.json, so they are known before the weights load.
            self._read_config(cfg)

    def _read_config(self, cfg: Any) -> None:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        """The wrapped diffusers model, loaded from the folder on first access."""
        if self._model is None:
            cls = getattr(_diffusers(), self.class_name)
            try:
                model = cls.from_pretrained(str(self.folder), local_files_only=True, torch_dtype=self.dtype)
            except (OSError, ValueError) as e:
                raise CodecError(f"cannot load a diffusers {self.class_name} from {self.folder}: {e}") from None
            model = model.to(self.device).eval()
            self._read_config(model.config)
            self._model = model
        return self._model


class DiffusersVAEAdapter(_LazyDiffusersModel, LatentCodec):
    """A pretrained ``diffusers.AutoencoderKL`` from a local folder, used per frame.

    Latents are normalised the way diffusers pipelines do it, ``z = (mean - shift_factor) * scaling_factor``,
    with the values of the model's config (``shift_factor`` is absent for SD-style VAEs and counts as 0).

    Args:
        folder: a local diffusers AutoencoderKL folder (``config.json`` + weights), or a pipeline folder
            with a ``vae`` sub-folder.
        device, dtype: where and in which precision the wrapped model runs.
        frames_per_batch: frames pushed through the model at once (bounds memory for long videos).
        model: an already-built AutoencoderKL-like object (skips loading; for tests and callers holding one).
    """

    def __init__(self, folder: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, frames_per_batch: int = 16, model: Any = None):
        self.frames_per_batch = frames_per_batch
        super().__init__(folder, device, dtype, model)

    def _read_config(self, cfg: Any) -> None:
        get = _getter(cfg)
        self.latent_channels = int(get("latent_channels", 4))
        # AutoencoderKL halves the resolution between consecutive blocks: 2 ** (blocks - 1).
        self.downsample = 2 ** (len(get("block_out_channels", (0, 0, 0, 0))) - 1)
        self.scaling_factor = float(get("scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(get("shift_factor", 0.0) or 0.0)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        model = self.model
        _check_video(video, self.downsample)
        b, f = video.shape[:2]
        frames = video.flatten(0, 1).to(self.device, self.dtype)  # (B*F, 3, H, W)
        out = []
        for chunk in frames.split(self.frames_per_batch):
            enc = model.encode(chunk)
            dist = enc.latent_dist if hasattr(enc, "latent_dist") else enc[0]
            # The distribution's mean: deterministic latents, as diffusers' ``mode()``.
            out.append((dist.mean - self.shift_factor) * self.scaling_factor)
        z = torch.cat(out).float()
        return z.unflatten(0, (b, f))  # (B, F, C, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        model = self.model
        _check_latents(latents, self.latent_channels)
        b, f = latents.shape[:2]
        z = latents.flatten(0, 1).to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        out = []
        for chunk in z.split(self.frames_per_batch):
            dec = model.decode(chunk)
            out.append(dec.sample if hasattr(dec, "sample") else dec[0])
        x = torch.cat(out).float().clamp(-1, 1)
        return x.unflatten(0, (b, f))  # (B, F, 3, H, W)


class WanVAEAdapter(_LazyDiffusersModel, LatentCodec):
    """Wan's causal video VAE (``diffusers.AutoencoderKLWan``) from a local folder, ``t_down = 4``.

    Latents are normalised per channel as the Wan pipelines do, ``z = (mean - latents_mean) / latents_std``.
    ``decode_chunk`` runs Wan's decoder latent frame by latent frame with its causal feature cache held in the
    returned state (not in the model), so a stream decodes exactly as ``decode`` does on the whole sequence
    and several sessions can share one model.

    Args:
        folder: a local diffusers AutoencoderKLWan folder, or a Wan pipeline folder with a ``vae`` sub-folder.
        device, dtype: where and in which precision the wrapped model runs.
        model: an already-built ``AutoencoderKLWan`` (skips loading).
    """

    class_name = WAN_CLASS

    def __init__(self, folder: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, model: Any = None):
        super().__init__(folder, device, dtype, model)

    def _read_config(self, cfg: Any) -> None:
        get = _getter(cfg)
        self.latent_channels = int(get("z_dim", 16))
        temporal = get("temperal_downsample", (False, True, True))
        self.t_down = int(get("scale_factor_temporal", None) or 2 ** sum(bool(x) for x in temporal))
        self.patch_size = int(get("patch_size", None) or 1)
        blocks = len(get("dim_mult", (1, 2, 4, 4)))
        self.downsample = int(get("scale_factor_spatial", None) or 2 ** (blocks - 1) * self.patch_size)
        mean, std = get("latents_mean", None), get("latents_std", None)
        if mean is None or std is None or len(mean) != self.latent_channels or len(std) != self.latent_channels:
            raise CodecError(f"AutoencoderKLWan config: latents_mean / latents_std must list {self.latent_channels} "
                             f"values (z_dim), got {mean!r} / {std!r}")
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1)
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        model = self.model
        _check_video(video, self.downsample, t_down=self.t_down)
        # Wan's first latent frame holds one frame: the last of lpm's first group (see the module docstring).
        x = video[:, self.t_down - 1:].transpose(1, 2).to(self.device, self.dtype)  # (B, 3, 1 + t (L-1), H, W)
        enc = model.encode(x)
        dist = enc.latent_dist if hasattr(enc, "latent_dist") else enc[0]
        mean = dist.mean.float().transpose(1, 2).cpu()  # (B, L, C, h, w)
        return ((mean - self.latents_mean) / self.latents_std).to(video.device)

    def _wan_latents(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.latent_channels)
        z = latents.float().cpu() * self.latents_std + self.latents_mean
        return z.transpose(1, 2).to(self.device, self.dtype)  # (B, C, L, h, w)

    def _hold_first(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + t (L-1), H, W) -> (B, t L, 3, H, W): Wan's first frame held over lpm's frames 0 .. t-2."""
        video = video.float().clamp(-1, 1).transpose(1, 2)
        return torch.cat([video[:, :1].expand(-1, self.t_down - 1, -1, -1, -1), video], dim=1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.model.decode(self._wan_latents(latents))
        video = out.sample if hasattr(out, "sample") else out[0]
        return self._hold_first(video).to(latents.device)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Decode a chunk with Wan's causal cache threaded through ``state`` (``(feature cache, frames done)``)."""
        model = self.model
        if state is None:
            count = sum(type(m).__name__ == "WanCausalConv3d" for m in model.decoder.modules())
            state = ([None] * count, 0)
        cache, done = state
        x = model.post_quant_conv(self._wan_latents(latents))  # kernel 1 in time: per latent frame
        frames = []
        for i in range(x.shape[2]):
            # One latent frame at a time, as AutoencoderKLWan._decode does; the cache carries the causal context.
            frames.append(model.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=done + i == 0))
        video = torch.cat(frames, dim=2)
        if self.patch_size > 1:
            wan = importlib.import_module(type(model).__module__)
            video = wan.unpatchify(video, patch_size=self.patch_size)
        video = self._hold_first(video) if done == 0 else video.float().clamp(-1, 1).transpose(1, 2)
        return video.to(latents.device), (cache, done + latents.shape[1])
