"""Latent codecs: the interface (``lpm.models.codec_base``) and the one place that builds a codec from a spec.

``load_codec`` picks an implementation: an lpm checkpoint by its kind (``vae``: the per-frame ``LpmVAE``;
``causal_vae``: the temporally compressing ``CausalVAE``), or ``diffusers:/folder`` by the folder's
``config.json`` class (``AutoencoderKLWan``: ``WanVAEAdapter``; otherwise ``DiffusersVAEAdapter``). Imports flow
one way: the implementations import the interface, this module imports them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lpm.models.causal_vae import CHECKPOINT_KIND as CAUSAL_KIND
from lpm.models.causal_vae import CausalVAE
from lpm.models.codec_base import CodecError, LatentCodec, _check_latents, _check_video
from lpm.models.diffusers_codec import WAN_CLASS, DiffusersVAEAdapter, WanVAEAdapter, read_folder_config
from lpm.models.vae import CHECKPOINT_KIND as VAE_KIND
from lpm.models.vae import LpmVAE
from lpm.training.checkpoint import read_metadata

__all__ = ["CodecError", "LatentCodec", "DiffusersVAEAdapter", "WanVAEAdapter", "LpmVAE", "CausalVAE",
           "load_codec", "time_codec", "_check_latents", "_check_video"]

DIFFUSERS_PREFIX = "diffusers:"


def load_codec(spec: str | Path, device: str | torch.device = "cpu") -> LatentCodec:
    """Build a codec from a spec.

    Args:
        spec: ``diffusers:/path/to/folder`` for a local diffusers AutoencoderKL or AutoencoderKLWan (told apart
            by the folder's ``config.json`` ``_class_name``); otherwise a path to an lpm VAE checkpoint
            (``vae.safetensors``, per-frame or causal) or to a run / checkpoint folder holding one.
    """
    text = str(spec)
    if text.startswith(DIFFUSERS_PREFIX):
        folder = text[len(DIFFUSERS_PREFIX):]
        if not folder:
            raise CodecError("diffusers: spec needs a folder, e.g. diffusers:/models/sd-vae-ft-mse")
        _, config = read_folder_config(Path(folder))
        if config.get("_class_name") == WAN_CLASS:
            return WanVAEAdapter(folder, device=device)
        return DiffusersVAEAdapter(folder, device=device)
    path = Path(text)
    if path.is_dir():
        path = path / "vae.safetensors"
    if not path.is_file():
        raise CodecError(f"no VAE checkpoint at {path} (expected lpm's vae.safetensors or diffusers:/folder)")
    kind = read_metadata(path)["kind"]
    if kind == CAUSAL_KIND:
        return CausalVAE.from_checkpoint(path, device=device)
    if kind != VAE_KIND:
        raise CodecError(f"{path}: a {kind!r} checkpoint is not a VAE (expected kind {VAE_KIND!r} or {CAUSAL_KIND!r})")
    return LpmVAE.from_checkpoint(path, device=device)


@torch.no_grad()
def time_codec(codec: LatentCodec, height: int, width: int, frames: int = 4,
               dtypes: tuple[torch.dtype, ...] = (torch.float32,), budget_s: float = 1.0,
               max_iters: int = 20) -> dict[str, float]:
    """Milliseconds per video frame of ``decode`` (per dtype) and ``encode`` (fp32) on one chunk of ``frames``
    video frames (``frames / t_down`` latent frames; ``frames`` must be a multiple of the codec's ``t_down``).

    Runs on the codec's device with the current torch thread count; non-fp32 dtypes run under autocast. Each
    measurement is the median over iterations after one warm-up, stopping after ``budget_s`` or ``max_iters``.

    Returns:
        {"decode_fp32": ms, "decode_bf16": ms, ..., "encode_fp32": ms} per frame.
    """
    import statistics
    import time

    device = getattr(codec, "device", None) or next(codec.parameters()).device  # type: ignore[attr-defined]
    d = codec.downsample
    latents = torch.randn(1, codec.latent_frames(frames), codec.latent_channels, height // d, width // d,
                          device=device)
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
