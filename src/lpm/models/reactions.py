"""Listening reactions as events: when to react (a learned onset hazard) and what a reaction looks like (a template).

Why: a listener's nod follows the partner's phrase end after a delay that varies (the world draws it from 0.2-0.6 s),
so a regression of the head-pitch track from audio learns the *average* over delays: a shallow smear that no reader
sees as a nod (the shipped speech network's track: 0 of 16 held-out reactions found by the bench's event rules,
while the true motion gives 14). A performer does not nod on average; it nods once, at one moment. So the speech
network also predicts, per frame and per reaction kind, the probability that a reaction *starts* there (trained
with a per-frame cross-entropy against the true onsets), and the track gets a whole reaction where that
probability, summed over the last ``window`` frames, first reaches one half: the onset the evidence makes most
likely. Each kind's shape (``templates``) is the event-triggered mean of the true track after onsets, measured on
the training data. The regression head then learns the track *without* the reactions (the target minus the
placed templates), so nothing is counted twice.

Everything here is causal and stateless: a frame's reactions depend on the hazard of the ``window + frames - 1``
frames before it, so a streamed chunk gets the same track as the whole clip (given that much audio history).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lpm.events import Event

# The world's listening reactions (``lpm.world.controller``) and the bench's reaction types share these names.
REACTION_KINDS: tuple[str, ...] = ("nod", "brow_raise", "head_tilt", "smile")
FIRE_LEVEL = 0.5  # a reaction starts where the windowed onset probability first reaches this


def onset_targets(events: list[tuple[str, int]], kinds: tuple[str, ...], num_frames: int) -> torch.Tensor:
    """``(F, R)`` 0/1: 1 at each onset frame of each reaction kind (other event types are ignored).

    Args:
        events: ``(type, onset frame)`` pairs, e.g. from a clip's ``meta.json`` events.
    """
    out = torch.zeros(num_frames, len(kinds))
    for kind, frame in events:
        if kind in kinds and 0 <= frame < num_frames:
            out[frame, kinds.index(kind)] = 1.0
    return out


def reaction_history(frames: int, window: int) -> int:
    """Frames before a frame whose onset hazard can change its reactions: a template of ``frames`` frames started at
    most ``frames - 1`` frames ago, fired by a sum over ``window`` frames before that (see ``fire``)."""
    return window + frames - 1


def fire(hazard: torch.Tensor, window: int, level: float = FIRE_LEVEL) -> torch.Tensor:
    """Onsets from per-frame onset probabilities: where the sum over the last ``window`` frames crosses ``level``.

    Args:
        hazard: ``(B, F, R)`` probabilities in [0, 1].
    Returns:
        ``(B, F, R)`` 0/1 (``hazard``'s dtype). Frame ``f`` depends on ``hazard[:, f - window : f + 1]`` only.
    """
    h = hazard.transpose(1, 2)  # (B, R, F)
    s = F.avg_pool1d(F.pad(h, (window, 0)), window, stride=1) * window  # (B, R, F + 1): s[..., j] sums j-window..j-1
    now, before = s[..., 1:], s[..., :-1]
    return ((now >= level) & (before < level)).to(hazard.dtype).transpose(1, 2)


def place(onsets: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Each onset's template added from its frame on: ``out[f] = sum_r sum_j onsets[f - j, r] * templates[r, j]``.

    Args:
        onsets: ``(B, F, R)``; templates: ``(R, L, P)``.
    Returns:
        ``(B, F, P)`` (causal: frame ``f`` depends on onsets of frames ``f - L + 1 .. f``).
    """
    r, length, p = templates.shape
    weight = templates.flip(1).permute(2, 0, 1).to(onsets.dtype)  # (P, R, L): conv1d correlates, so flip time
    x = F.pad(onsets.transpose(1, 2), (length - 1, 0))  # (B, R, L - 1 + F)
    return F.conv1d(x, weight).transpose(1, 2)  # (B, F, P)


def estimate_templates(tracks: list[torch.Tensor], onsets: list[torch.Tensor], length: int) -> torch.Tensor:
    """Each kind's mean departure of the track over the ``length`` frames from an onset, from the frame before it.

    The departures are sign-aligned on one channel first, keeping the majority's sign, so that a kind whose
    reactions go either way (a head tilt left or right) averages to a tilt and not zero (``aligned_mean``). A kind
    with no onset gets zeros.

    Args:
        tracks: per clip ``(F, P)``; onsets: per clip ``(F, R)`` from ``onset_targets``.
    Returns:
        ``(R, L, P)``.
    """
    num_kinds, num_channels = onsets[0].shape[1], tracks[0].shape[1]
    per_kind: list[list[torch.Tensor]] = [[] for _ in range(num_kinds)]
    for track, on in zip(tracks, onsets):
        n = track.shape[0]
        for frame, kind in on.nonzero().tolist():
            if frame < 1 or frame + length > n:
                continue  # a reaction cut by the clip's edge would bias the mean toward zero
            per_kind[kind].append(track[frame:frame + length] - track[frame - 1])  # (L, P)
    out = torch.zeros(num_kinds, length, num_channels)
    for k, deps in enumerate(per_kind):
        if deps:
            out[k] = aligned_mean(torch.stack(deps))
    return out


# A channel may carry a reaction only with at least this share of the largest channel's energy (below it, a
# channel's shape can agree across events by chance on nothing).
MIN_ENERGY_SHARE = 0.02


def aligned_mean(departures: torch.Tensor) -> torch.Tensor:
    """The mean of one kind's departures ``(E, L, P)`` after sign-aligning them on one channel, with the majority's
    sign: ``(L, P)``.

    Each event's side on a channel is the sign of its departure over the window's first quarter (``onset_frames``):
    a reaction starts at its onset, while the head's idle wander fills the rest of the two-second window. The
    channel aligned on is the one whose aligned mean keeps the largest share of its events' energy (where the
    events agree in shape), among channels with at least ``MIN_ENERGY_SHARE`` of the largest one's energy.

    Why not, as before stop 40, the channel that moves most, aligned on its sum over the whole window: a nod is a
    pitch dip of 6-11 degrees for a third of a second, while the idle yaw wanders by a few degrees over the window,
    so yaw carries more energy per event, and the pitch's sum over the window is mostly wander too. Aligned so, the
    nods' dip averaged to nothing and the shipped nod template was the aligned wander, a slow 3-degree yaw ramp.
    Measured on 400 world clips: aligned on the first quarter, the nods' pitch keeps 0.65 of its energy, the yaw's
    wander 0.33 (0.26 and 0.53 aligned on the whole window); tilts' roll 0.96, brow raises' brow 0.98.
    """
    length = departures.shape[1]
    onset_frames = max(2, -(-length // 4))
    energy = departures.pow(2).sum(1).mean(0)  # (P,) per-event energy of each channel
    sign = torch.sign(departures[:, :onset_frames].sum(1))  # (E, P) each event's side on each channel
    sign[sign == 0] = 1.0
    aligned = (departures * sign[:, None, :]).mean(0)  # (L, P) channel p aligned on itself
    agreement = aligned.pow(2).sum(0) / energy.clamp_min(1e-12)  # (P,)
    agreement[energy < MIN_ENERGY_SHARE * energy.max()] = -1.0
    main = int(agreement.argmax())
    s = sign[:, main]
    majority = 1.0 if s.sum() >= 0 else -1.0
    return (departures * (s * majority)[:, None, None]).mean(0)


def onset_events(onsets: torch.Tensor, kinds: tuple[str, ...]) -> list[Event]:
    """The onsets ``(F, R)`` (fired or true) of one clip as events, to be matched as the bench matches reactions
    (``lpm.events.match_events``)."""
    return [Event(kinds[k], frame) for frame, k in onsets.nonzero().tolist()]
