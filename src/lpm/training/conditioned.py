"""The Base model's conditioning as a batch (``ConditionBatch``) and the DiT wrapped to take it.

``ConditionBatch`` holds raw conditioning (captions, log-mel of both streams, pose, reference latents) and
knows how to drop each condition (``without``) the way training drops it for classifier-free guidance, so
the CFG sampler (``lpm.diffusion.cfg``) and the trainer share one definition of "null":
- text -> the empty caption (the byte encoder still sees its BOS token);
- own / partner audio -> the log-mel of silence (what ``LogMel`` gives for zero PCM);
- references -> the global reference only (body views and expressions dropped).

``ConditionedDiT`` encodes the captions inside its forward, so under FSDP2 the text encoder's parameters
are gathered with the root module like every other non-block parameter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT
from lpm.models.kv_cache import KVCache

GLOBAL_REFERENCE = "global"


@dataclass
class ConditionBatch:
    """Conditioning of B windows of ``F`` latent frames.

    Attributes:
        captions: B captions ("" = dropped).
        mel_self, mel_partner: ``(B, Fa, k, M)`` log-mel; ``mel[:, 0]`` is at frame ``audio_start_frame``
            relative to the window's first frame.
        audio_start_frame: ``<= 0``; the audio covers the windows' history and lookahead.
        references: kind -> ``(B, C, h, w)`` clean latents, canonical order, ``global`` always present.
        pose: ``(B, F, pose_dim)`` degrees, or None.
        silent_mel: the log-mel value of silence (``log(MelConfig.log_floor)``), used for dropped audio.
        motion: ``(B, F, P)`` the true motion track (``lpm.models.motion_track``), or None (predicted from audio).
        motion_from_audio: ``(B,)`` bool, samples that get the predicted track instead of ``motion``, or None.
    """

    captions: list[str]
    mel_self: torch.Tensor
    mel_partner: torch.Tensor
    audio_start_frame: int
    references: dict[str, torch.Tensor]
    pose: torch.Tensor | None
    silent_mel: float
    motion: torch.Tensor | None = None
    motion_from_audio: torch.Tensor | None = None
    track_gain: torch.Tensor | None = None  # (P,) gain on the predicted track (inference only; Conditioning's)
    track_range: torch.Tensor | None = None  # (2, P) bounds on the predicted track (inference only; Conditioning's)

    def __len__(self) -> int:
        return len(self.captions)

    def without(self, names: frozenset[str] | set[str]) -> ConditionBatch:
        """The same batch with conditions ``names`` (``lpm.diffusion.cfg.CONDITIONS``) dropped for every sample."""
        out = dataclasses.replace(self)
        if "text" in names:
            out.captions = [""] * len(self)
        if "audio_self" in names:
            out.mel_self = torch.full_like(self.mel_self, self.silent_mel)
        if "audio_partner" in names:
            out.mel_partner = torch.full_like(self.mel_partner, self.silent_mel)
        if "references" in names:
            out.references = {GLOBAL_REFERENCE: self.references[GLOBAL_REFERENCE]}
        return out

    def select(self, index: slice | torch.Tensor) -> ConditionBatch:
        """Samples ``index`` (a slice or a 1-D index tensor)."""
        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return dataclasses.replace(
            self,
            captions=[self.captions[i] for i in rows],
            mel_self=self.mel_self[index],
            mel_partner=self.mel_partner[index],
            references={k: v[index] for k, v in self.references.items()},
            pose=None if self.pose is None else self.pose[index],
            motion=None if self.motion is None else self.motion[index],
            motion_from_audio=None if self.motion_from_audio is None else self.motion_from_audio[index],
        )

    def to(self, device: torch.device | str) -> ConditionBatch:
        return dataclasses.replace(
            self,
            mel_self=self.mel_self.to(device),
            mel_partner=self.mel_partner.to(device),
            references={k: v.to(device) for k, v in self.references.items()},
            pose=None if self.pose is None else self.pose.to(device),
            motion=None if self.motion is None else self.motion.to(device),
            motion_from_audio=None if self.motion_from_audio is None else self.motion_from_audio.to(device),
            track_gain=None if self.track_gain is None else self.track_gain.to(device),
            track_range=None if self.track_range is None else self.track_range.to(device),
        )


class ConditionedDiT(nn.Module):
    """``DiT`` taking a ``ConditionBatch``: ``(x_t (B, F, C, h, w), t (B,), cond) -> (B, F, C, h, w)``.

    Args:
        dit: the network (its weights are this module's ``dit.*``).
    """

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def conditioning(self, cond: ConditionBatch, dtype: torch.dtype, device: torch.device) -> Conditioning:
        """The DiT's ``Conditioning`` of a batch (captions encoded here, a module call so FSDP hooks run)."""
        encoder = self.dit.text_encoder
        ids, mask = encoder.tokenize(cond.captions)  # (B, L) each
        ids, mask = ids.to(device), mask.to(device)
        tokens = encoder(ids, mask)  # (B, L, text_dim)
        kinds = list(cond.references)
        return Conditioning(
            text_tokens=tokens,
            text_mask=mask,
            audio_self=cond.mel_self.to(dtype),
            audio_partner=cond.mel_partner.to(dtype),
            audio_start_frame=cond.audio_start_frame,
            pose=cond.pose,
            references=References([cond.references[k].to(dtype) for k in kinds], kinds),
            motion=cond.motion,
            motion_from_audio=cond.motion_from_audio,
            captions=list(cond.captions),
            track_gain=cond.track_gain,
            track_range=cond.track_range,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: ConditionBatch, cache: KVCache | None = None,
                update_cache: bool = False) -> torch.Tensor:
        """``x_t (B, F, C, h, w)``, ``t (B,)`` or ``(B, F)``; with a ``cache``, one chunk of the stream (the
        batch's ``audio_start_frame`` is then in stream frames, see ``DiT.forward``)."""
        conditioning = self.conditioning(cond, x_t.dtype, x_t.device)
        if cache is not None:  # the window's pose and motion tracks: keep the chunk's frames
            first = cache.chunks_seen * cache.frames_per_chunk
            if cond.pose is not None:
                conditioning.pose = cond.pose[:, first:first + x_t.shape[1]]
            if cond.motion is not None:
                conditioning.motion = cond.motion[:, first:first + x_t.shape[1]]
        return self.dit(x_t, t, conditioning, cache=cache, update_cache=update_cache)
