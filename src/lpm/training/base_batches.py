"""Batches of the Base trainer: random windows of cached clips, with classifier-free-guidance dropout.

A batch is a pure function of ``(seed, step)``: every rank draws the same global batch and keeps its shard
(``shard_batch``), and a resumed run sees exactly the batches it would have seen, with no RNG state to save.

Dropout (separately per condition, so each can be guided on its own at sampling, ``lpm.diffusion.cfg``):
text, own audio and partner audio per sample; the extra references (all but ``global``) per batch, since
every sample of one forward must carry the same reference kinds. Pose is dropped inside the DiT
(``DiTConfig.pose_dropout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lpm.diffusion.flow import Batch
from lpm.models.motion_track import to_track
from lpm.training.conditioned import GLOBAL_REFERENCE, ConditionBatch
from lpm.training.face_weights import loss_weights
from lpm.training.latent_cache import CachedClip
from lpm.world.motion import MOTION_NAMES


@dataclass
class ConditionDropout:
    """Probability that a condition is dropped (replaced by its null) in a training sample."""

    text: float = 0.1  # caption -> ""
    audio_self: float = 0.1  # own voice -> silence
    audio_partner: float = 0.1  # partner's voice -> silence
    references: float = 0.1  # body views and expressions dropped (per batch), the global image kept


@dataclass
class Window:
    """Latent frames ``[start, start + frames)`` of one cached clip."""

    clip: CachedClip
    start: int


class WindowSampler:
    """Draws global batches of ``frames``-frame windows.

    Args:
        clips: the cached training clips.
        frames: F, latent frames per window.
        audio_before, audio_after: frames of audio needed before the window's first frame and after its
            last (``DiT.audio_frame_range``: the audio windows, the encoder's history, the lookahead).
        silent: the log-mel of silence (the null audio).
        dropout: CFG dropout probabilities.
        face_weight: loss weight added on mouth/eye cells (``face_weights.loss_weights``).
        motion_channels: the DiT's motion track; windows carry their true track when every clip has motion.
        predicted_motion: share of samples (drawn per step) that get the track predicted from audio instead.
        predicted_channels: the channels those samples get predicted (the others stay true); () = all.
        mouth_weight: loss weight added on mouth-only cells.
        expression_weight: loss weight added on brow and cheek cells (where the emotions show).
        balance_modes: draw the clip's mode (speak / listen / conversation / idle) uniformly first, so rarer
            behaviours are seen as often as common ones.
        seed: the run's seed.
    """

    def __init__(self, clips: list[CachedClip], frames: int, audio_before: int, audio_after: int, silent: float,
                 dropout: ConditionDropout, face_weight: float, balance_modes: bool, seed: int,
                 motion_channels: tuple[str, ...] = (), predicted_motion: float = 0.0,
                 mouth_weight: float = 0.0, predicted_channels: tuple[str, ...] = (),
                 expression_weight: float = 0.0) -> None:
        unknown = [c for c in predicted_channels if c not in motion_channels]
        if unknown:
            raise ValueError(f"predicted_channels {unknown} are not in the motion track {list(motion_channels)}")
        clips = [c for c in clips if c.frames >= frames]
        if not clips:
            raise ValueError(f"no clip has {frames} frames or more")
        self.clips, self.frames = clips, frames
        self.audio_before, self.audio_after, self.silent = audio_before, audio_after, silent
        self.dropout, self.face_weight, self.seed = dropout, face_weight, seed
        self.motion_channels, self.predicted_motion, self.mouth_weight = motion_channels, predicted_motion, mouth_weight
        self.predicted_channels = tuple(predicted_channels)
        self.expression_weight = expression_weight
        modes = sorted({c.mode for c in clips})
        self.by_mode = [[i for i, c in enumerate(clips) if c.mode == m] for m in modes] if balance_modes else [
            list(range(len(clips)))]

    def windows(self, rng: np.random.Generator, count: int) -> list[Window]:
        out = []
        for _ in range(count):
            group = self.by_mode[rng.integers(len(self.by_mode))]
            clip = self.clips[group[rng.integers(len(group))]]
            out.append(Window(clip, int(rng.integers(0, clip.frames - self.frames + 1))))
        return out

    def batch(self, step: int, size: int) -> Batch:
        """The global batch of training step ``step`` (without times and noise), CFG dropout applied."""
        rng = np.random.default_rng([self.seed, step])
        windows = self.windows(rng, size)
        drop = self.draw_dropout(rng, size)
        drop_refs = bool(rng.random() < self.dropout.references)
        batch = self.assemble(windows, drop, drop_refs)
        if batch.cond.motion is not None and self.predicted_motion > 0:
            batch.cond.motion_from_audio = self.motion_from_audio(rng, size)
        return batch

    def motion_from_audio(self, rng: np.random.Generator, size: int) -> torch.Tensor:
        """Which samples see the predicted track: ``(B,)`` bool, or ``(B, P)`` with only ``predicted_channels``
        predicted (e.g. the mouth, while the head pose stays true: the DiT then learns to follow the track's head
        pose, which idle motion sets at inference, rather than to distrust it)."""
        chosen = torch.from_numpy(rng.random(size) < self.predicted_motion)  # (B,)
        if not self.predicted_channels:
            return chosen
        channels = torch.tensor([c in self.predicted_channels for c in self.motion_channels])  # (P,)
        return chosen[:, None] & channels[None]

    def draw_dropout(self, rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
        """Per-sample CFG dropout masks of text, own audio and partner audio (``assemble``'s ``drop``)."""
        d = self.dropout
        return {name: rng.random(size) < p for name, p in
                (("text", d.text), ("audio_self", d.audio_self), ("audio_partner", d.audio_partner))}

    def assemble(self, windows: list[Window], drop: dict[str, np.ndarray] | None = None,
                 drop_references: bool = False) -> Batch:
        """Stack windows into a ``Batch`` (``drop``: per-sample masks for text / audio_self / audio_partner)."""
        f = self.frames
        drop = drop or {}
        no = np.zeros(len(windows), bool)
        x_0 = torch.stack([w.clip.latents[w.start:w.start + f].float() for w in windows])  # (B, F, C, h, w)
        mels = torch.stack([self._mel(w) for w in windows])  # (B, 2, Fa, k, M)
        for row, name in ((0, "audio_self"), (1, "audio_partner")):
            mels[torch.from_numpy(drop.get(name, no)), row] = self.silent
        kinds = [k for k in windows[0].clip.references if all(k in w.clip.references for w in windows)]
        if drop_references or GLOBAL_REFERENCE not in kinds:
            kinds = [GLOBAL_REFERENCE]
        references = {k: torch.stack([w.clip.references[k].float() for w in windows]) for k in kinds}
        pose = None
        if all(w.clip.pose is not None for w in windows):
            pose = torch.stack([w.clip.pose[w.start:w.start + f] for w in windows])  # (B, F, 4)
        weights = torch.stack([
            loss_weights(None if w.clip.coverage is None else w.clip.coverage[w.start:w.start + f],
                         self.face_weight, (f, *x_0.shape[-2:]),
                         None if w.clip.mouth is None else w.clip.mouth[w.start:w.start + f], self.mouth_weight,
                         None if w.clip.expression is None else w.clip.expression[w.start:w.start + f],
                         self.expression_weight)
            for w in windows])  # (B, F, h, w)
        motion = None
        if self.motion_channels and all(w.clip.motion is not None for w in windows):
            motion = torch.stack([to_track(w.clip.motion[w.start:w.start + f], MOTION_NAMES, self.motion_channels)
                                  for w in windows])  # (B, F, P)
        captions = ["" if d else w.clip.caption for w, d in zip(windows, drop.get("text", no))]
        cond = ConditionBatch(captions=captions, mel_self=mels[:, 0], mel_partner=mels[:, 1],
                              audio_start_frame=-self.audio_before, references=references, pose=pose,
                              silent_mel=self.silent, motion=motion)
        return Batch(x_0=x_0, cond=cond, weights=weights)

    def _mel(self, w: Window) -> torch.Tensor:
        """``(2, Fa, k, M)`` mel of frames ``start - audio_before .. start + F + audio_after``; silence outside."""
        mel = w.clip.mel
        frames = torch.arange(w.start - self.audio_before, w.start + self.frames + self.audio_after)
        inside = (frames >= 0) & (frames < mel.shape[1])
        out = mel[:, frames.clamp(0, mel.shape[1] - 1)].clone()  # (2, Fa, k, M)
        out[:, ~inside] = self.silent
        return out


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s contiguous share of a global batch (its size must divide by ``world_size``)."""
    b = batch.x_0.shape[0]
    if b % world_size:
        raise ValueError(f"global batch {b} does not divide over {world_size} ranks")
    part = slice(rank * b // world_size, (rank + 1) * b // world_size)
    return Batch(
        x_0=batch.x_0[part], cond=batch.cond.select(part),
        weights=None if batch.weights is None else batch.weights[part],
        t=None if batch.t is None else batch.t[part],
        noise=None if batch.noise is None else batch.noise[part],
    )
