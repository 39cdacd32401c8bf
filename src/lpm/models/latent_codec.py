"""The latent codec interface: what the DiT, the runtime and the bench need from a VAE.

Tensor convention (ARCHITECTURE.md): video ``(B, F, 3, H, W)`` float in [-1, 1]; latents
``(B, F, C, H/d, W/d)`` with ``C = latent_channels`` and ``d = downsample``. Latents leave ``encode`` already
normalised (shifted and scaled to roughly unit variance per channel), so diffusion code never sees a codec's
raw latent statistics.

Implementations: ``lpm.models.vae.LpmVAE`` (ours) and ``DiffusersVAEAdapter`` (a pretrained
``diffusers.AutoencoderKL`` from a local folder). ``load_codec`` picks one from a path or
``diffusers:/folder``.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from lpm.errors import LpmError

DIFFUSERS_PREFIX = "diffusers:"


class CodecError(LpmError):
    """A codec that cannot be loaded or does not fit its input."""


class LatentCodec(ABC):
    """Pixels <-> latents, per frame or per chunk.

    ``decode_chunk`` is the streaming entry point: the runtime calls it once per generated chunk and threads
    the returned state into the next call. Per-frame codecs (no temporal compression) return ``None`` as the
    state and ``decode_chunk`` equals ``decode`` on any split of the frames; a temporally compressed codec
    must keep that property (causal decoding) through its state.
    """

    latent_channels: int
    downsample: int

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video to normalised latents.

        Args:
            video: (B, F, 3, H, W) float in [-1, 1]; H and W divisible by ``downsample``.
        Returns:
            (B, F, C, H/d, W/d) latents, roughly zero mean and unit variance per channel.
        """

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents to a video.

        Args:
            latents: (B, F, C, h, w).
        Returns:
            (B, F, 3, h*d, w*d) float in [-1, 1].
        """

    def decode_chunk(self, latents: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Decode one chunk of a stream; per-frame codecs carry no state between chunks.

        Args:
            latents: (B, F_chunk, C, h, w).
            state: what the previous call returned (``None`` for the first chunk).
        Returns:
            (video chunk (B, F_chunk, 3, H, W), state for the next chunk).
        """
        return self.decode(latents), state

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Encode still images (reference images) as one-frame videos.

        Args:
            images: (B, 3, H, W) float in [-1, 1].
        Returns:
            (B, C, H/d, W/d) normalised latents.
        """
        return self.encode(images[:, None])[:, 0]


def _check_video(video: torch.Tensor, downsample: int, what: str = "video") -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise CodecError(f"{what}: expected (B, F, 3, H, W), got {tuple(video.shape)}")
    if video.shape[-1] % downsample or video.shape[-2] % downsample:
        raise CodecError(f"{what}: H and W must be divisible by {downsample}, got {tuple(video.shape[-2:])}")


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    if latents.ndim != 5 or latents.shape[2] != channels:
        raise CodecError(f"latents: expected (B, F, {channels}, h, w), got {tuple(latents.shape)}")


class DiffusersVAEAdapter(LatentCodec):
    """A pretrained ``diffusers.AutoencoderKL`` from a local folder, used per frame.

    The model is loaded lazily (on first use) with ``local_files_only=True``: nothing is downloaded. Its
    latents are normalised the way diffusers pipelines do it, ``z = (mean - shift_factor) * scaling_factor``,
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
        if folder is None and model is None:
            raise CodecError("DiffusersVAEAdapter needs a folder or a model")
        self.folder = None if folder is None else Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.frames_per_batch = frames_per_batch
        self._model = model
        if model is not None:
            self._read_config(model.config)
            return
        if not self.folder.is_dir():
            raise CodecError(f"diffusers VAE folder {self.folder} does not exist")
        if not (self.folder / "config.json").is_file() and (self.folder / "vae" / "config.json").is_file():
            self.folder = self.folder / "vae"  # a whole pipeline folder: use its VAE
        # Shape and scaling come from the folder's config.json, so they are known before the weights load.
        config_path = self.folder / "config.json"
        try:
            self._read_config(json.loads(config_path.read_text()) if config_path.is_file() else {})
        except json.JSONDecodeError as e:
            raise CodecError(f"{config_path}: invalid JSON: {e}") from None

    def _read_config(self, cfg: Any) -> None:
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        self.latent_channels = int(get("latent_channels", 4))
        # AutoencoderKL halves the resolution between consecutive blocks: 2 ** (blocks - 1).
        self.downsample = 2 ** (len(get("block_out_channels", (0, 0, 0, 0))) - 1)
        self.scaling_factor = float(get("scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(get("shift_factor", 0.0) or 0.0)

    @property
    def model(self) -> Any:
        """The wrapped AutoencoderKL, loaded from the folder on first access."""
        if self._model is None:
            try:
                diffusers = importlib.import_module("diffusers")
            except ImportError:
                raise CodecError(
                    "the diffusers VAE adapter needs the 'diffusers' package: pip install diffusers"
                ) from None
            folder = self.folder
            try:
                model = diffusers.AutoencoderKL.from_pretrained(
                    str(folder), local_files_only=True, torch_dtype=self.dtype
                )
            except (OSError, ValueError) as e:
                raise CodecError(f"cannot load a diffusers AutoencoderKL from {folder}: {e}") from None
            model = model.to(self.device).eval()
            self._read_config(model.config)
            self._model = model
        return self._model

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


def load_codec(spec: str | Path, device: str | torch.device = "cpu") -> LatentCodec:
    """Build a codec from a spec.

    Args:
        spec: ``diffusers:/path/to/folder`` for a local diffusers AutoencoderKL; otherwise a path to an lpm
            VAE checkpoint (``vae.safetensors``) or to a run / checkpoint folder holding one.
    """
    text = str(spec)
    if text.startswith(DIFFUSERS_PREFIX):
        folder = text[len(DIFFUSERS_PREFIX):]
        if not folder:
            raise CodecError("diffusers: spec needs a folder, e.g. diffusers:/models/sd-vae-ft-mse")
        return DiffusersVAEAdapter(folder, device=device)
    from lpm.models.vae import LpmVAE  # local import: vae.py imports this module

    path = Path(text)
    if path.is_dir():
        path = path / "vae.safetensors"
    if not path.is_file():
        raise CodecError(f"no VAE checkpoint at {path} (expected lpm's vae.safetensors or diffusers:/folder)")
    return LpmVAE.from_checkpoint(path, device=device)


@torch.no_grad()
def time_codec(codec: LatentCodec, height: int, width: int, frames: int = 4,
               dtypes: tuple[torch.dtype, ...] = (torch.float32,), budget_s: float = 1.0,
               max_iters: int = 20) -> dict[str, float]:
    """Milliseconds per frame of ``decode`` (per dtype) and ``encode`` (fp32) on one chunk of ``frames``.

    Runs on the codec's device with the current torch thread count; non-fp32 dtypes run under autocast. Each
    measurement is the median over iterations after one warm-up, stopping after ``budget_s`` or ``max_iters``.

    Returns:
        {"decode_fp32": ms, "decode_bf16": ms, ..., "encode_fp32": ms} per frame.
    """
    import statistics
    import time

    device = getattr(codec, "device", None) or next(codec.parameters()).device  # type: ignore[attr-defined]
    d = codec.downsample
    latents = torch.randn(1, frames, codec.latent_channels, height // d, width // d, device=device)
    video = torch.rand(1, frames, 3, height, width, device=device) * 2 - 1

    def measure(fn, dtype: torch.dtype) -> float:
        device_type = torch.device(device).type
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype != torch.float32):
            fn()  # warm-up (kernel selection, allocator)
            times, start = [], time.perf_counter()
            while len(times) < max_iters and (len(times) < 2 or time.perf_counter() - start < budget_s):
                t = time.perf_counter()
                fn()
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        return round(statistics.median(times) * 1000 / frames, 3)

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    out = {f"decode_{names[dt]}": measure(lambda: codec.decode(latents), dt) for dt in dtypes}
    out["encode_fp32"] = measure(lambda: codec.encode(video), torch.float32)
    return out
