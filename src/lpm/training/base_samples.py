"""Sample videos of the Base model during training: generate a held-out window, decode, put beside the truth.

``RUN/samples/step_XXXXXX.mp4``: generated frames (left) beside the clip's real frames (right), with the
clip's two voices muxed as a stereo track (left = own voice, right = partner).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lpm.data.clip import read_clip
from lpm.data.video import write_mp4
from lpm.diffusion.cfg import GuidanceSpec, guided
from lpm.diffusion.flow import FlowMatching
from lpm.diffusion.samplers import SAMPLERS, flow_timesteps
from lpm.models.latent_codec import LatentCodec
from lpm.training.conditioned import ConditionBatch


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [-1, 1] -> ``(F, H, W, 3)`` uint8."""
    return video.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(model: Callable[..., torch.Tensor], flow: FlowMatching, cond: ConditionBatch, shape: tuple[int, ...],
             steps: int, sampler: str, guidance: GuidanceSpec, seed: int) -> torch.Tensor:
    """Latents ``shape = (B, F, C, h, w)`` from noise: ``sampler`` over ``steps`` shifted times, with CFG."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    velocity = guided(flow.denoiser(model), guidance)
    return SAMPLERS[sampler](velocity, noise, flow_timesteps(steps, flow.cfg.shift), cond)


def write_sample(path: Path, latents: torch.Tensor, codec: LatentCodec, clip_dir: Path, start: int) -> Path:
    """Decode ``latents (1, F, C, h, w)`` and write them beside frames ``start .. start + F`` of the clip."""
    frames = latents.shape[1]
    fake = to_uint8(codec.decode(latents.float())[0])  # (F, H, W, 3)
    clip = read_clip(clip_dir, start=start, count=frames)
    real = to_uint8(clip.video)
    if real.shape != fake.shape:
        raise ValueError(f"sample {fake.shape} and clip {real.shape} differ in size")
    side = np.concatenate([fake, real], axis=2)  # (F, H, 2W, 3)
    return write_mp4(path, side, audio=clip.audio.numpy())
