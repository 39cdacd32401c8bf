"""Frames as the Online model draws them, aligned with the truth: inputs for the restorer with the DiT's own faults.

A blurred latent (``restorer_trainer.soften``) is soft the way a Gaussian is; the Online DiT's drawing is soft in its
own way (eyes of the wrong colour, glasses half drawn, a mouth that smears), and a restorer trained on blur learns
little about those. Here the Online checkpoint draws a window of a clip the way it streams (``distill.student.rollout``
with the checkpoint's own denoising times: chunk after chunk from noise, each clean chunk committed to the KV cache)
from the clip's true motion track, audio, caption and references. Its drawing follows the track's mouth, blinks and
expression but barely turns the head or body (r 0.15-0.4 of the truth, learning.md arm 20), so only chunks where the
true head and body face nearly straight ahead are kept (``still_chunks``): there the drawing lines up with the true
frame, and the restorer learns the face rather than to smear a pose it cannot know.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lpm.diffusion.flow import FlowMatching
from lpm.distill.student import rollout
from lpm.errors import LpmError
from lpm.models.dit import load_dit
from lpm.models.latent_codec import LatentCodec
from lpm.runtime.dit_engine import flow_config_of, online_sampling_of
from lpm.training.base_batches import ConditionDropout, Window, WindowSampler
from lpm.training.conditioned import ConditionedDiT
from lpm.training.latent_cache import CachedClip, silent_mel
from lpm.world.motion import MOTION_INDEX


class DitDrawer:
    """An Online DiT checkpoint streaming windows of cached clips (``draw``).

    Args:
        checkpoint: an Online checkpoint (block-causal, ``extra["online"]`` with its denoising times).
        window_chunks: chunks per drawn window (the first ones are the later ones' context, as in a stream).
    """

    def __init__(self, checkpoint: str | Path, window_chunks: int = 2) -> None:
        sampling = online_sampling_of(checkpoint)
        if sampling is None:
            raise LpmError(f"{checkpoint} is not an Online checkpoint (no extra['online'] denoising times)")
        self.times = list(sampling.timesteps)
        self.dit = load_dit(checkpoint).float().eval()
        if self.dit.cfg.t_down != 1:  # a drawn latent frame must be one video frame, to pair it with the truth
            raise LpmError(f"{checkpoint}: drawn pairs need a per-frame VAE (t_down 1), this DiT has t_down "
                           f"{self.dit.cfg.t_down}")
        self.model = ConditionedDiT(self.dit)
        self.flow = FlowMatching(flow_config_of(str(checkpoint)))
        self.fpc = self.dit.cfg.frames_per_chunk
        self.frames = window_chunks * self.fpc
        self.mel = self.dit.cfg.mel

    def sampler(self, clips: list[CachedClip]) -> WindowSampler:
        """Windows of ``clips`` with the DiT's audio margins and its true motion track, no dropout."""
        before, after = self.dit.audio_margin()
        none = ConditionDropout(text=0.0, audio_self=0.0, audio_partner=0.0, references=0.0)
        return WindowSampler(clips, self.frames, before, after, silent_mel(self.mel), none, 0.0, False, 0,
                             self.dit.cfg.motion_channels, 0.0)

    @torch.no_grad()
    def draw(self, sampler: WindowSampler, clip: CachedClip, start: int, generator: torch.Generator) -> torch.Tensor:
        """The window of latent frames ``start ..`` as the model streams it: ``(frames, C, h, w)``."""
        if start < 0 or start + self.frames > clip.latents.shape[0]:
            raise LpmError(f"window {start}..{start + self.frames} is outside the clip's {clip.latents.shape[0]} "
                           "latent frames")
        batch = sampler.assemble([Window(clip, start)])
        shape = tuple(batch.x_0.shape)
        noise = torch.randn(shape, generator=generator)
        renoise = torch.randn((max(len(self.times) - 2, 0), *shape), generator=generator)
        video = rollout(self.model, self.flow, batch.cond, shape, self.times, noise, renoise, None, self.dit.cfg)
        return video.video[0]


# The channels whose pose the drawing must nearly share with the truth for a pair to line up (degrees).
POSE_CHANNELS = ("head_yaw", "head_pitch", "head_roll", "body_yaw")


def still_chunks(length: int, motion: torch.Tensor | None, frames: int, fpc: int,
                 max_deg: float) -> list[tuple[int, int]]:
    """Every (window start, chunk) of a clip of ``length`` latent frames whose chunk's frames all hold the head and
    body within ``max_deg`` of straight ahead (``motion (length, NUM_MOTION)``; every position when ``max_deg <= 0``
    or there is no motion).

    The Online DiT draws the head's and body's turns at r 0.15-0.4 of the truth (learning.md, arm 20): where the
    true pose is turned, its drawing is not, and a restorer trained on that pair learns to smear the difference."""
    positions = [(s, c) for s in range(length - frames + 1) for c in range(frames // fpc)]
    if max_deg <= 0 or motion is None:
        return positions
    idx = [MOTION_INDEX[n] for n in POSE_CHANNELS]
    still = (motion[:, idx].abs() <= max_deg).all(1)  # (F,)
    return [(s, c) for s, c in positions if bool(still[s + c * fpc: s + (c + 1) * fpc].all())]


def draw_runs(drawer: DitDrawer, clip: CachedClip, codec: LatentCodec, runs: int, generator: torch.Generator,
              max_deg: float = 0.0) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Up to ``runs`` windows of ``clip`` streamed by the DiT, each keeping its last chunk, among the windows whose
    last chunk ``still_chunks`` allows (``max_deg``): ``(frame indices (fpc,), decoded frames (fpc, 3, H, W) in
    [-1, 1])`` per window (none for a clip without such a chunk)."""
    length = clip.latents.shape[0]
    if length < drawer.frames:
        raise LpmError(f"a clip of {length} latent frames is shorter than the drawing window ({drawer.frames})")
    last = drawer.frames // drawer.fpc - 1
    allowed = [s for s, c in still_chunks(length, clip.motion, drawer.frames, drawer.fpc, max_deg) if c == last]
    sampler = drawer.sampler([clip])
    out = []
    for p in torch.randperm(len(allowed), generator=generator)[:runs].tolist():
        start = allowed[p]
        latents = drawer.draw(sampler, clip, start, generator)[last * drawer.fpc:]
        frames = codec.decode(latents[None].float())[0]  # (fpc, 3, H, W)
        out.append((np.arange(start + last * drawer.fpc, start + drawer.frames), frames))
    return out
