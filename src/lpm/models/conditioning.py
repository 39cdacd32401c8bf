"""Conditioning inputs of the DiT (typed) and the embedders of pose and references.

- ``References``: VAE latents of the global image, body views and expression exemplars, each with its kind.
  They are patchified (the global image at the video patch size, the others coarser, LPM 1.0 arXiv
  2604.07823) and placed at a rotary time offset per type and sub-type
  (``DiTConfig.reference_time_position``), so the model knows which reference is which without a
  learned slot order.
- ``Pose``: per-frame head yaw / pitch / roll and body yaw (degrees, the rig's convention in
  ``lpm.world.motion``), embedded and added to every token of its frame; dropped per sample in training so the
  model runs with or without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lpm.models.dit_config import DiTConfig
from lpm.models.rope import grid_positions


@dataclass
class References:
    """Reference latents of one batch, with their kinds (``global``, ``body_<view>``, ``expr_<name>``)."""

    latents: list[torch.Tensor]  # each (B, C, h, w), clean VAE latents
    kinds: list[str]  # same length; every kind at most once


@dataclass
class Conditioning:
    """Everything but the noisy latents and the flow time.

    Attributes:
        text_tokens: ``(B, L, text_dim)`` from a ``TextEncoder``.
        text_mask: ``(B, L)`` bool, True = real token.
        audio_self: ``(B, Fa, k, M)`` log-mel of the character's own speech.
        audio_partner: ``(B, Fa, k, M)`` log-mel of the partner's speech.
        audio_start_frame: global frame index of ``audio_*[:, 0]`` (0 for a clip; for a streaming chunk, the
            start of the range given by ``DiT.audio_frame_range``).
        pose: ``(B, F, pose_dim)`` degrees for the frames being generated, or None.
        references: the references, or None (a cached forward takes them from the cache).
        motion: ``(B, F, P)`` the motion track of the frames being generated (``lpm.models.motion_track``,
            track units), or None: the DiT then predicts it from the audio (inference).
        motion_from_audio: ``(B,)`` bool, samples whose given ``motion`` is replaced by the prediction
            (training shows the DiT the predicted track too), or ``(B, P)`` per channel, or None.
        captions: the B captions as text, read by the speech network when it predicts the track from the caption
            too (``DiTConfig.speech_caption_buckets``); None = no caption.
        track_gain: ``(P,)`` per-channel gain on the track the DiT predicts from the audio (inference only: an
            Online checkpoint's ``extra["online"]["track_gain"]``; None = 1). A given ``motion`` is never scaled.
        track_range: ``(2, P)`` low and high bounds (track units) the predicted track is clipped to after its gain
            (inference only: ``extra["online"]["track_range"]``, ``lpm.models.motion_track.track_range_tensor``;
            None = unbounded). A given ``motion`` is never clipped.
        brow_exemplar: ``(lo, hi)``: the canvas (``DiTConfig.expression_canvas``) moves toward the surprised
            exemplar as the track's brow raise goes from lo to hi (inference only: ``extra["online"]
            ["brow_exemplar"]``, ``lpm.models.expression.brow_exemplar_weight``); None = not.
    """

    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    audio_self: torch.Tensor
    audio_partner: torch.Tensor
    audio_start_frame: int = 0
    pose: torch.Tensor | None = None
    references: References | None = None
    motion: torch.Tensor | None = None
    motion_from_audio: torch.Tensor | None = None
    captions: list[str] | None = None
    track_gain: torch.Tensor | None = None
    track_range: torch.Tensor | None = None
    brow_exemplar: tuple[float, float] | None = None


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, F, C, h, w) -> (B, F, (h/p)*(w/p), C*p*p)``, row-major patches."""
    b, f, c, h, w = x.shape
    x = x.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, h/p, w/p, C, p, p)
    return x.reshape(b, f, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """``(B, F, (h/p)*(w/p), C*p*p) -> (B, F, C, h, w)``."""
    b, f = x.shape[:2]
    x = x.reshape(b, f, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, F, C, h/p, p, w/p, p)
    return x.reshape(b, f, c, h, w)


class PoseEmbedder(nn.Module):
    """Pose ``(B, F, P)`` degrees -> ``(B, F, D)``: [sin, cos] of each angle, then a two-layer MLP."""

    def __init__(self, pose_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.mlp = nn.Sequential(nn.Linear(2 * pose_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        radians = pose * (math.pi / 180.0)
        e = self.mlp(torch.cat([radians.sin(), radians.cos()], dim=-1))  # (B, F, D)
        if self.training and self.dropout > 0:
            # Per-sample dropout of the whole track: the "no pose" case is an exact zero, as at inference.
            keep = torch.rand(pose.shape[0], 1, 1, device=pose.device) >= self.dropout
            e = e * keep
        return e


class ReferenceEmbedder(nn.Module):
    """Reference latents -> tokens ``(B, R, D)`` and their rotary positions ``(R, 3)``."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.latent_channels
        self.fine = nn.Linear(c * cfg.patch_size**2, cfg.dim)  # the global reference
        self.coarse = nn.Linear(c * cfg.reference_patch_size**2, cfg.dim)  # body views and expressions

    def forward(self, refs: References) -> tuple[torch.Tensor, torch.Tensor]:
        if len(set(refs.kinds)) != len(refs.kinds) or len(refs.kinds) != len(refs.latents):
            raise ValueError(f"references need one latent per distinct kind, got kinds {refs.kinds}")
        cfg, tokens, positions = self.cfg, [], []
        for latent, kind in zip(refs.latents, refs.kinds):
            time = cfg.reference_time_position(kind)  # also validates the kind
            p = cfg.reference_patch(kind)
            proj = self.fine if p == cfg.patch_size else self.coarse
            tokens.append(proj(patchify(latent[:, None], p)[:, 0]))  # (B, n_k, D)
            rows, cols = cfg.latent_height // p, cfg.latent_width // p
            positions.append(
                grid_positions(torch.tensor([float(time)]), rows, cols, stride=p / cfg.patch_size)
            )
        return torch.cat(tokens, dim=1), torch.cat(positions)  # (B, R, D), (R, 3)
