"""Idle head motion and blinks, sampled: what the speech network cannot predict, drawn instead of regressed to the
mean.

A character's head holds a pose and sways whether or not anyone speaks, and none of it is in the audio: regressed
from audio, the track's head pose is the mean (a still head; the world-FID of such a model is near the still
image's). This module adds to the *predicted* track's head yaw / pitch / roll a held offset and a sway, each a
stationary process with the statistics measured on the training clips' true tracks (``calibrate_idle``):

- offset: per character, Gaussian-like with the across-clip standard deviation of the clips' mean pose;
- sway: a sum of ``M`` sinusoids at frequencies drawn from the measured spectrum of the within-clip motion,
  amplitude set to its standard deviation.

Per character: the random values (offset draws and sway phases) are a fixed random projection of the global
reference latent's channel means, wrapped to [0, 1) (a smooth function of the reference, so the same character gets
the same idle pattern on any device and dtype). The sway is a function of the absolute frame index alone, so a
streamed session equals the full forward. All buffers: zero amplitudes (the uncalibrated default) add nothing.

Blinks (``calibrate_blinks``): the regressed blink channels are ~0 (a blink is not in the voice), so the eyes never
close. One blink per period of the measured mean interval between blinks, at a point of the period drawn from
the blink's index and the character (a hash, so again a function of the absolute frame alone), with the mean
blink's measured shape; a period longer than the shape, so blinks never overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lpm.models.reference_warp import pose_channels

SWAY_COMPONENTS = 6
BLINK_CHANNELS = ("blink_l", "blink_r")
BLINK_FRAMES = 8  # frames of the mean blink kept from its onset (the world's blink lasts ~5)
BLINK_ONSET = 0.3  # a blink starts where the true blink channel rises through this
PROJECTION_SCALE = 37.0  # the reference's channel means are O(1): a large scale decorrelates nearby characters


def head_channels(motion_channels: tuple[str, ...]) -> list[int]:
    return pose_channels(motion_channels, "idle_motion")


class IdleMotion(nn.Module):
    """``(reference (B, C, h, w), first_frame, num_frames)`` -> the idle track ``(B, F, P)`` to add to a predicted
    track (zero on every channel but the head pose).

    Args:
        motion_channels: the track's channel names. latent_channels: C of the reference latent.
    """

    def __init__(self, motion_channels: tuple[str, ...], latent_channels: int,
                 components: int = SWAY_COMPONENTS) -> None:
        super().__init__()
        k = len(head_channels(motion_channels))
        self.num_channels = len(motion_channels)
        self.register_buffer("channels", torch.tensor(head_channels(motion_channels)), persistent=False)
        self.register_buffer("offset_std", torch.zeros(k))  # track units (the scaled channel)
        self.register_buffer("sway_std", torch.zeros(k))
        self.register_buffer("frequencies", torch.zeros(k, components))  # cycles per latent frame
        g = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(latent_channels, k * (1 + components), generator=g)
                             * PROJECTION_SCALE)
        blinks = [motion_channels.index(c) for c in BLINK_CHANNELS if c in motion_channels]
        self.register_buffer("blink_channels", torch.tensor(blinks, dtype=torch.long), persistent=False)
        self.register_buffer("blink_period", torch.zeros(()))  # mean latent frames between blinks; 0 = no blinks
        self.register_buffer("blink_shape", torch.zeros(BLINK_FRAMES))  # the mean blink from its onset, track units
        self.register_buffer("blink_projection", torch.randn(latent_channels, 1, generator=g) * PROJECTION_SCALE)

    def forward(self, reference: torch.Tensor, first_frame: int, num_frames: int) -> torch.Tensor:
        b = reference.shape[0]
        k, m = self.frequencies.shape
        u = torch.frac(reference.to(self.projection.dtype).mean((2, 3)) @ self.projection)  # (B, k * (1 + M)) in [0, 1)
        u = u.abs()
        offset_u, phase_u = u[:, :k], u[:, k:].unflatten(1, (k, m))  # (B, k), (B, k, M)
        offset = self.offset_std * math.sqrt(2) * torch.sin(2 * math.pi * offset_u)  # std offset_std over characters
        frames = torch.arange(first_frame, first_frame + num_frames, dtype=u.dtype, device=reference.device)
        angle = 2 * math.pi * (self.frequencies[None, :, :, None] * frames + phase_u[..., None])  # (B, k, M, F)
        sway = self.sway_std[None, :, None] * math.sqrt(2 / m) * torch.sin(angle).sum(2)  # (B, k, F)
        out = torch.zeros(b, num_frames, self.num_channels, dtype=u.dtype, device=reference.device)
        out[:, :, self.channels] = (offset[:, :, None] + sway).transpose(1, 2)
        if float(self.blink_period) > 0 and len(self.blink_channels):
            character = torch.frac(reference.to(self.projection.dtype).mean((2, 3)) @ self.blink_projection).abs()
            out[:, :, self.blink_channels] = self.blinks(character, frames)[:, :, None].to(out)
        return out

    def blinks(self, character: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The blink channel ``(B, F)`` at absolute ``frames (F,)`` for characters ``(B, 1)`` in [0, 1): blink ``j``
        starts at ``j * period + h(j, character) * (period - BLINK_FRAMES)``, ``h`` a hash in [0, 1)."""
        period, length = float(self.blink_period), len(self.blink_shape)
        f = frames.double()[None]  # (1, F)
        c = character.double()  # (B, 1)
        out = torch.zeros(c.shape[0], f.shape[1], dtype=torch.float64, device=frames.device)
        for back in (0, 1):  # the blink of this period, or the previous one's tail
            j = torch.floor(f / period) - back
            onset = j * period + torch.frac(torch.sin(j * 12.9898 + c * 78.233).abs() * 43758.5453) * (period - length)
            d = torch.floor(f - onset)  # (B, F) frames since that blink's onset
            inside = (d >= 0) & (d < length)
            out = out + torch.where(inside, self.blink_shape.double()[d.clamp(0, length - 1).long()], 0.0)
        return out


def idle_tracks(data_dir: str | Path, motion_channels: tuple[str, ...],
                split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """What idle motion is calibrated on, read in one pass over ``data_dir``'s ``split`` clips with those channels
    (cut to the shortest): the true head-pose tracks ``(N, F, k)`` (track units, ``IdleMotion``'s channel order)
    and, when the track has blink channels, the true ``blink_l`` tracks ``(N, F)`` (else None)."""
    from lpm.data.clip import read_clip, read_manifest
    from lpm.models.motion_track import to_track

    head = tuple(motion_channels[i] for i in head_channels(motion_channels))
    blinks = any(c in motion_channels for c in BLINK_CHANNELS)
    names = head + (BLINK_CHANNELS[:1] if blinks else ())
    tracks = []
    for row in read_manifest(data_dir, split):
        clip = read_clip(Path(data_dir) / row["path"], load_video=False)
        if clip.motion is not None and all(n in clip.motion_names for n in names):
            tracks.append(to_track(clip.motion, clip.motion_names, names).numpy())
    if len(tracks) < 2:
        what = "head-pose motion and blinks" if blinks else "head-pose motion"
        raise ValueError(f"{data_dir} ({split}): {len(tracks)} clips with {what}; idle motion is calibrated on the "
                         f"true tracks of a world data set")
    frames = min(len(t) for t in tracks)
    both = np.stack([t[:frames] for t in tracks])  # (N, F, k [+ 1])
    return both[..., :len(head)], (both[..., len(head)] if blinks else None)


@dataclass(frozen=True)
class IdleStats:
    """What ``calibrate_idle`` measured (track units; frequencies in cycles per latent frame)."""

    offset_std: list[float]
    sway_std: list[float]
    frequencies: list[list[float]]
    clips: int


def calibrate_idle(idle: IdleMotion, tracks: np.ndarray, seed: int = 0, scale: float = 1.0) -> IdleStats:
    """Set ``idle``'s statistics from true head-pose tracks ``(N, F, k)`` (the module's channels, in order): the
    across-clip std of the clips' mean pose, the within-clip std (both times ``scale``), and ``M`` frequencies
    drawn from the mean power spectrum of the within-clip motion (DC excluded)."""
    tracks = np.asarray(tracks, np.float64)
    if tracks.ndim != 3 or tracks.shape[2] != len(idle.channels) or tracks.shape[1] < 8 or len(tracks) < 2:
        raise ValueError(f"calibrating idle motion needs >= 2 tracks of >= 8 frames x {len(idle.channels)} head-pose "
                         f"channels, got {tracks.shape}")
    means = tracks.mean(1)  # (N, k)
    centred = tracks - means[:, None]
    power = (np.abs(np.fft.rfft(centred, axis=1)) ** 2).mean(0)[1:]  # (F/2, k), DC dropped
    freqs = np.fft.rfftfreq(tracks.shape[1])[1:]
    rng = np.random.default_rng(seed)
    m = idle.frequencies.shape[1]
    drawn = []
    for c in range(tracks.shape[2]):
        p = power[:, c] / power[:, c].sum()
        # Draw from the spectrum, jittered within a bin so components do not beat in lockstep.
        bins = rng.choice(len(freqs), size=m, p=p)
        width = freqs[0]
        drawn.append(np.clip(freqs[bins] + rng.uniform(-0.5, 0.5, m) * width, width / 4, 0.5))
    if scale < 0:
        raise ValueError(f"the idle motion's scale must be >= 0, got {scale}")
    stats = IdleStats(offset_std=(scale * means.std(0)).tolist(), sway_std=(scale * centred.std((0, 1))).tolist(),
                      frequencies=[d.tolist() for d in drawn], clips=len(tracks))
    with torch.no_grad():
        idle.offset_std.copy_(torch.tensor(stats.offset_std))
        idle.sway_std.copy_(torch.tensor(stats.sway_std))
        idle.frequencies.copy_(torch.tensor(np.array(stats.frequencies)))
    return stats


@dataclass(frozen=True)
class BlinkStats:
    """What ``calibrate_blinks`` measured: mean latent frames between blink onsets, the mean blink's shape."""

    period: float
    shape: list[float]
    blinks: int


def calibrate_blinks(idle: IdleMotion, tracks: np.ndarray) -> BlinkStats:
    """Set ``idle``'s blink period and shape from true blink tracks ``(N, F)``: onsets where the channel rises
    through ``BLINK_ONSET``; the period is frames per onset, the shape the mean of the ``BLINK_FRAMES`` frames from
    each onset (onsets too near a clip's end left out of the shape)."""
    tracks = np.asarray(tracks, np.float64)
    if tracks.ndim != 2 or len(tracks) < 2:
        raise ValueError(f"calibrating blinks needs >= 2 tracks (N, F), got {tracks.shape}")
    if not len(idle.blink_channels):
        raise ValueError("the motion track has no blink channels (blink_l, blink_r) to set")
    above = tracks >= BLINK_ONSET
    onsets = above[:, 1:] & ~above[:, :-1]  # (N, F - 1): onset at frame f + 1
    n, f = np.nonzero(onsets)
    if len(n) < 2:
        raise ValueError(f"{len(n)} blinks in {tracks.shape[0]} clips: too few to calibrate")
    period = tracks.size / len(n)
    if period <= BLINK_FRAMES:
        raise ValueError(f"blinks every {period:.1f} frames: not longer than a blink ({BLINK_FRAMES} frames)")
    whole = [(i, j + 1) for i, j in zip(n, f) if j + 1 + BLINK_FRAMES <= tracks.shape[1]]
    shape = np.mean([tracks[i, j:j + BLINK_FRAMES] for i, j in whole], axis=0) if whole else np.zeros(BLINK_FRAMES)
    stats = BlinkStats(period=float(period), shape=shape.tolist(), blinks=len(n))
    with torch.no_grad():
        idle.blink_period.fill_(stats.period)
        idle.blink_shape.copy_(torch.tensor(stats.shape))
    return stats
