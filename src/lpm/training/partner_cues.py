"""The partner's cues as targets for the speech network's features: a phrase ended, a question ended, a laugh began.

Why: a listener in the world nods after a partner's statement and raises its brows or tilts its head after a
question (``lpm.world.controller``). Trained on the reactions' onsets alone, the speech network learned "a phrase
ended" and not which kind: on fresh world clips its nod hazard after a question's end was the same as after a
statement's (0.35 vs 0.32 summed over the next 0.8 s; stop 42), so every question drew a nod the truth does not
have (18 false nods of 34 on 60 train listening clips). The audio tells them apart: a small classifier on the
partner's log-mel of the 16 frames before a phrase end calls questions at 93 % (a majority guess: 62 %). So the
script's cues, known exactly in every world clip, supervise the network's per-frame features directly through an
auxiliary head that only training has: "a cue of this kind happened within the last ``CUE_HOLD_FRAMES`` frames".
The onset heads read the same features, so what tells a question from a statement is there for them to use.

A clip without a script (real footage) has no cue targets; its windows carry no cue loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

CUE_KINDS: tuple[str, ...] = ("phrase_end", "question", "laugh")
# A cue's target holds from its frame for this many frames (0.25 s at 24 fps): a causal reader knows a phrase has
# ended only once a pause follows it, well before the world's reactions start (0.2-0.6 s after the cue).
CUE_HOLD_FRAMES = 6


def partner_cue_frames(segments: list[dict[str, Any]], fps: int, sample_rate: int) -> list[tuple[str, int]]:
    """``(kind, frame)`` of each cue in a clip's script (``meta.json``'s ``segments``, the world's ``Segment``
    dicts): a partner speech segment's end is a ``question`` or a ``phrase_end``, a partner laugh's start a
    ``laugh`` (the frames ``lpm.world.controller.cues_from_conversation`` reacts to)."""
    def frame(sample: Any) -> int:
        return int(round(int(sample) * fps / sample_rate))

    out = []
    for s in segments:
        if s.get("speaker") != "partner":
            continue
        if s.get("kind") == "laugh":
            out.append(("laugh", frame(s["start"])))
        elif s.get("kind") == "speech":
            out.append(("question" if s.get("question") else "phrase_end", frame(s["end"])))
    return out


def cue_targets(cues: list[tuple[str, int]], num_frames: int, hold: int = CUE_HOLD_FRAMES) -> torch.Tensor:
    """``(F, len(CUE_KINDS))`` float 0/1: 1 from each cue's frame for ``hold`` frames (cut to the clip)."""
    out = torch.zeros(num_frames, len(CUE_KINDS))
    for kind, frame in cues:
        if kind not in CUE_KINDS:
            raise ValueError(f"unknown partner cue {kind!r}; expected one of {CUE_KINDS}")
        out[max(0, frame):max(0, min(num_frames, frame + hold)), CUE_KINDS.index(kind)] = 1.0
    return out


class CueHead(nn.Module):
    """The speech network's per-frame features ``(B, F, D)`` -> cue logits ``(B, F, len(CUE_KINDS))``; a training
    objective's part, never saved with the network."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, len(CUE_KINDS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features)

    def loss(self, features: torch.Tensor, targets: torch.Tensor, has_cues: torch.Tensor) -> torch.Tensor:
        """Mean per-frame cross-entropy over the windows that have a script (``has_cues (B,)`` bool); 0 if none.

        Args:
            features: ``(B, F, D)``; targets: ``(B, F, K)``.
        """
        if not bool(has_cues.any()):
            return features.sum() * 0.0
        logits = self(features[has_cues])
        return F.binary_cross_entropy_with_logits(logits, targets[has_cues].to(logits.dtype))
