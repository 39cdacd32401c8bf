"""The motion track: a per-frame face/head motion vector between the audio and the DiT.

Why (ARCHITECTURE.md, "Learnability"): a DiT trained only through the diffusion loss did not learn to read its
own speech (lip r 0.00), while a small network reads the mouth from the same log-mel at r ~0.98 in minutes. So
the model is split the way EchoMimic / Loopy split it, inside one network:

- ``SpeechMotion`` (the *speech encoder*): both audio streams -> the motion track ``(B, F, P)``. Own speech
  drives the mouth (with the own-speech lookahead of the cross-attention windows), partner speech drives the
  listening reactions (nods, brow raises, smiles), through dilated causal convolutions over frames. Trained on
  the world's ground-truth motion (``lpm train speech``); frozen while the DiT trains.
- ``MotionEmbedder``: the track -> a per-frame embedding added to the flow-time embedding (adaLN of every
  block, as DiT adds a class embedding) and to every token of its frame.

In training the DiT gets the *true* track (dropped per sample, and replaced by the predicted one for a share of
samples); at inference it gets ``SpeechMotion``'s prediction from audio alone, so the Online model still takes
audio and references and nothing else.

Track values are the rig's channels (``lpm.world.motion``) divided by ``TRACK_SCALE`` so each is O(1).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpm.config import to_dict
from lpm.errors import LpmError
from lpm.models.caption_bag import caption_bag
from lpm.models.reactions import FIRE_LEVEL, fire, place, reaction_history
from lpm.training.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint

SPEECH_KERNEL = 3  # frames per causal convolution of the speech network (each block reaches back 2 * dilation)
SPEECH_KIND = "speech_motion"  # checkpoint kind of a ``SpeechMotion`` (``lpm train speech``)
# DiTConfig fields a speech network's weights depend on: a checkpoint fits a DiT that agrees on all of them.
SPEECH_FIELDS = ("motion_channels", "speech_dim", "speech_dilations", "self_audio_lookahead_frames", "mel",
                 "speech_caption_buckets")
# Fields the speech network alone defines (its listening reactions, ``lpm.models.reactions``): a speech checkpoint
# carries them into the DiT it is exported into. A stored config without them means no reactions.
REACTION_FIELDS: dict[str, Any] = {"reaction_kinds": (), "reaction_frames": 48, "reaction_window": 10}
# Stored configs saved before these fields existed had them at this value (no caption input).
SPEECH_FIELD_DEFAULTS: dict[str, Any] = {"speech_caption_buckets": 0}

# Per-channel divisor from rig units to track units (angles in degrees: a nod is a few degrees).
@dataclass(frozen=True)
class MotionInputs:
    """What a frame range's motion track gives the DiT: its embedding ``(B, F, D)`` (adaLN and every token), its
    per-token part ``(B, F, N, D)`` (``motion_spatial``, else None) and the track ``(B, F, P)`` (``reference_warp``
    moves the reference by its head pose)."""

    embedding: torch.Tensor
    tokens: torch.Tensor | None
    track: torch.Tensor


TRACK_SCALE: dict[str, float] = {
    "jaw_open": 1.0, "mouth_round": 1.0, "mouth_wide": 1.0, "blink_l": 1.0, "blink_r": 1.0,
    "gaze_x": 1.0, "gaze_y": 1.0, "head_yaw": 10.0, "head_pitch": 10.0, "head_roll": 10.0,
    "brow_raise": 1.0, "smile": 1.0, "body_yaw": 90.0, "breath": 1.0,
    "emo_happy": 1.0, "emo_sad": 1.0, "emo_surprised": 1.0, "emo_angry": 1.0,
}


def speech_history(dilations: tuple[int, ...], reaction_frames: int = 0, reaction_window: int = 0) -> int:
    """Frames of audio before a frame that ``SpeechMotion``'s prediction reads: its blocks' reaches summed, plus,
    with reactions, the onsets a frame's reaction may have started at and the hazard window that fired them."""
    reach = (SPEECH_KERNEL - 1) * sum(dilations)
    return reach + (reaction_history(reaction_frames, reaction_window) if reaction_frames else 0)


def track_scale(channels: tuple[str, ...]) -> torch.Tensor:
    """``(P,)`` divisors of ``channels`` (an unknown name is a clear error)."""
    unknown = [c for c in channels if c not in TRACK_SCALE]
    if unknown:
        raise ValueError(f"unknown motion channels {unknown}; known: {', '.join(TRACK_SCALE)}")
    return torch.tensor([TRACK_SCALE[c] for c in channels])


MAX_TRACK_GAIN = 20.0  # a track gain beyond this is a typo, not a setting


class TrackGainError(LpmError, ValueError):
    """A malformed track gain or range (names the channel or pattern and what was expected)."""


def track_gains(spec: dict, channels: tuple[str, ...] | None = None) -> dict[str, float]:
    """Per-channel gains on the predicted track from ``spec`` (channel name or shell pattern such as ``emo_*`` ->
    gain): each gain finite and in (0, ``MAX_TRACK_GAIN``]; with ``channels`` (a model's motion channels) the
    patterns are expanded and each must match one of them. Later entries override earlier ones."""
    if not isinstance(spec, dict):
        raise TrackGainError(f"track_gain must map motion channels to gains, got {spec!r}")
    out: dict[str, float] = {}
    for pattern, gain in spec.items():
        try:
            g = float(gain)
        except (TypeError, ValueError):
            raise TrackGainError(f"track_gain[{pattern!r}] must be a number, got {gain!r}") from None
        if not math.isfinite(g) or not 0 < g <= MAX_TRACK_GAIN:
            raise TrackGainError(f"track_gain[{pattern!r}] must be in (0, {MAX_TRACK_GAIN:g}], got {gain!r}")
        names = [str(pattern)] if channels is None else fnmatch.filter(channels, str(pattern))
        if not names:
            raise TrackGainError(f"track_gain names {pattern!r}, which matches none of the model's motion "
                                 f"channels ({', '.join(channels) or 'none'})")
        out.update({n: g for n in names})
    return out


def track_gain_vector(spec: dict, channels: tuple[str, ...], device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``spec`` (as ``track_gains``, checked against ``channels``) as the ``(P,)`` vector ``Conditioning.track_gain``
    takes, 1 on the channels it does not name; None when nothing is scaled. Raises ``TrackGainError``."""
    gains = track_gains(spec, channels)
    if all(g == 1.0 for g in gains.values()):
        return None
    return torch.tensor([gains.get(c, 1.0) for c in channels], device=device)


def track_ranges(spec: dict, channels: tuple[str, ...] | None = None) -> dict[str, tuple[float, float]]:
    """Per-channel bounds on the predicted track from ``spec`` (channel name -> ``[lo, hi]`` in rig units: degrees
    for the head, the rig's own units elsewhere), each finite with ``lo < hi``; with ``channels`` (a model's motion
    channels) each name must be one of them."""
    if not isinstance(spec, dict):
        raise TrackGainError(f"track_range must map motion channels to [lo, hi], got {spec!r}")
    out: dict[str, tuple[float, float]] = {}
    for name, bounds in spec.items():
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise TrackGainError(f"track_range[{name!r}] must be [lo, hi], got {bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise TrackGainError(f"track_range[{name!r}] must be finite with lo < hi, got {bounds!r}")
        if channels is not None and name not in channels:
            raise TrackGainError(f"track_range names {name!r}, which is not one of the model's motion channels "
                                 f"({', '.join(channels) or 'none'})")
        out[str(name)] = (lo, hi)
    return out


def track_range_tensor(spec: dict, channels: tuple[str, ...],
                       device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``spec`` (as ``track_ranges``, checked against ``channels``) as the ``(2, P)`` bounds
    ``Conditioning.track_range`` takes, in track units (``TRACK_SCALE``), unbounded on the channels it does not
    name; None when it names none. Raises ``TrackGainError``."""
    ranges = track_ranges(spec, channels)
    if not ranges:
        return None
    inf = float("inf")
    bounds = torch.tensor([ranges.get(c, (-inf, inf)) for c in channels], dtype=torch.float32).T  # (2, P)
    return (bounds / track_scale(channels)).to(device)


def track_tensors(gains: dict, ranges: dict, channels: tuple[str, ...], device: torch.device | str = "cpu",
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A sampling's track gain and range (as a checkpoint stores them) as ``Conditioning.track_gain`` ``(P,)`` and
    ``Conditioning.track_range`` ``(2, P)`` over ``channels`` (``track_gain_vector``, ``track_range_tensor``).
    Raises ``TrackGainError``."""
    return track_gain_vector(gains, channels, device), track_range_tensor(ranges, channels, device)


def bound_track(track: torch.Tensor, bounds: torch.Tensor | None) -> torch.Tensor:
    """``track (..., P)`` clipped to ``bounds (2, P)`` (``track_range_tensor``; None: unchanged)."""
    if bounds is None:
        return track
    bounds = bounds.to(track)
    return torch.minimum(torch.maximum(track, bounds[0]), bounds[1])


# Percentiles of the true motion of a data set's train clips that ``measured_track_range`` reports, per channel
# (shell pattern, first match): the range a DiT trained on them has seen often enough to draw. The head angles move
# the whole face, and beyond their 1st-99th percentile the face smears (a nod x3 at -25 degrees pitch); the face's
# own channels have rare large values the DiT does draw (a smile of 0.8 in 0.5 % of frames), so only their outliers
# are cut. Chosen on train clips (docs/learning.md, "Track range").
RANGE_PERCENTILES: dict[str, tuple[float, float]] = {"head_*": (1.0, 99.0), "*": (0.1, 99.9)}


def measured_track_range(data_dir: str | Path, channels: tuple[str, ...], split: str = "train",
                         percentiles: dict[str, tuple[float, float]] | tuple[float, float] = RANGE_PERCENTILES,
                         ) -> dict[str, tuple[float, float]]:
    """Channel -> ``(lo, hi)`` (rig units) of the true motion of ``data_dir``'s ``split`` clips: the percentiles
    over every frame that ``percentiles`` gives the channel (one pair for all, or shell pattern -> pair, the first
    matching pattern; a channel none matches is left out), for the ``channels`` the clips carry (a flat channel,
    lo == hi, is left out too)."""
    import numpy as np

    from lpm.data.clip import read_clip, read_manifest

    values: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    for row in read_manifest(data_dir, split):
        clip = read_clip(Path(data_dir) / row["path"], load_video=False)
        if clip.motion is None:
            continue
        for c in channels:
            if c in clip.motion_names:
                values[c].append(np.asarray(clip.motion)[:, list(clip.motion_names).index(c)])
    if not any(values.values()):
        raise LpmError(f"{data_dir} ({split}): no clip carries true motion of the channels {', '.join(channels)}; "
                       f"a track range is measured on a world data set")
    rules = percentiles if isinstance(percentiles, dict) else {"*": percentiles}
    out = {}
    for c, parts in values.items():
        pair = next((p for pattern, p in rules.items() if fnmatch.fnmatchcase(c, pattern)), None)
        if parts and pair is not None:
            lo, hi = (float(v) for v in np.percentile(np.concatenate(parts), pair))
            if lo < hi:
                out[c] = (round(lo, 4), round(hi, 4))
    return out


def parse_track_gain(text: str) -> dict[str, float]:
    """``"emo_*=4,brow_raise=2"`` -> ``{"emo_*": 4.0, "brow_raise": 2.0}`` (``""``: no gain)."""
    spec: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TrackGainError(f"expected CHANNEL=GAIN items separated by commas (e.g. emo_*=4), got {item!r}")
        spec[name.strip()] = value.strip()
    return track_gains(spec)


def to_track(motion: torch.Tensor, motion_names: tuple[str, ...], channels: tuple[str, ...]) -> torch.Tensor:
    """Rig motion ``(..., len(motion_names))`` -> the track ``(..., P)`` of ``channels`` in track units."""
    scale = track_scale(channels)
    missing = [c for c in channels if c not in motion_names]
    if missing:
        raise ValueError(f"the motion has no channel(s) {missing} (it has {', '.join(motion_names)})")
    index = [motion_names.index(c) for c in channels]
    return motion[..., index].float() / scale.to(motion.device)


class DilatedCausalBlock(nn.Module):
    """Pre-norm residual block over frames: LayerNorm -> causal depthwise conv (kernel K, dilation d) -> GELU ->
    GLU projection. Output frame ``f`` sees input frames ``f - (K-1) d .. f``."""

    def __init__(self, dim: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.reach = (kernel - 1) * dilation
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation, groups=dim)
        self.proj = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, D) -> (B, F, D)``."""
        h = self.norm(x).transpose(1, 2)  # (B, D, F)
        h = self.conv(nn.functional.pad(h, (self.reach, 0))).transpose(1, 2)  # (B, F, D)
        a, b = self.proj(nn.functional.gelu(h)).chunk(2, dim=-1)
        return x + self.out(a * torch.sigmoid(b))


class SpeechMotion(nn.Module):
    """Both voices' log-mel -> the motion track.

    Args:
        n_mels, steps_per_frame: the mel layout ``(k, M)`` per frame.
        channels: the track's channel names (P).
        dim: width of the per-frame features.
        dilations: one causal block per entry (kernel ``SPEECH_KERNEL``); the reach back is ``speech_history``.
        lookahead: frames of own speech read ahead (the cross-attention's ``self_audio_lookahead_frames``).
        reactions: listening reaction kinds with an onset head (``lpm.models.reactions``); () for none.
        reaction_frames: length of each reaction's template (frames); reaction_window: frames of onset probability
            summed to fire one.
        caption_buckets: width of the caption's bag of words (``lpm.models.caption_bag``), added to every frame's
            features: the text control's emotion sets the ``emo_*`` channels and the smile and brow baselines;
            0 = no caption input.
    """

    def __init__(self, n_mels: int, steps_per_frame: int, channels: tuple[str, ...], dim: int,
                 dilations: tuple[int, ...], lookahead: int, reactions: tuple[str, ...] = (),
                 reaction_frames: int = 48, reaction_window: int = 10, caption_buckets: int = 0) -> None:
        super().__init__()
        self.caption_buckets = caption_buckets
        self.caption_in = nn.Linear(caption_buckets, dim) if caption_buckets else None
        self.channels, self.lookahead = tuple(channels), lookahead
        self.reactions, self.reaction_frames, self.reaction_window = tuple(reactions), reaction_frames, reaction_window
        self.self_in = nn.Linear(steps_per_frame * n_mels, dim)
        self.partner_in = nn.Linear(steps_per_frame * n_mels, dim)
        self.blocks = nn.ModuleList(DilatedCausalBlock(dim, SPEECH_KERNEL, d) for d in dilations)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, len(channels))
        if self.reactions:
            self.onset = nn.Linear(dim, len(self.reactions))  # logits of "a reaction of this kind starts here"
            # (R, L, P) event-triggered mean track after an onset, set from data by ``lpm train speech``.
            self.register_buffer("templates", torch.zeros(len(self.reactions), reaction_frames, len(channels)))
            # The windowed onset probability that fires a reaction, calibrated on the training clips at each
            # checkpoint (``lpm train speech``); a buffer, so it travels with the weights.
            self.register_buffer("fire_level", torch.tensor(FIRE_LEVEL))

    @property
    def history_frames(self) -> int:
        """Frames of audio before a frame that its prediction depends on."""
        reach = sum(b.reach for b in self.blocks)
        return reach + (reaction_history(self.reaction_frames, self.reaction_window) if self.reactions else 0)

    def forward(self, mel_self: torch.Tensor, mel_partner: torch.Tensor,
                captions: list[str] | None = None) -> torch.Tensor:
        """Args:
            mel_self, mel_partner: ``(B, Fa, k, M)`` log-mel of the same frames.
            captions: the B captions (text control) when the network reads them; None = no caption ("").
        Returns:
            ``(B, Fa, P)`` track; frame ``f`` depends on own speech up to ``f + lookahead`` and partner speech up
            to ``f``. The last ``lookahead`` frames see the own-speech features of the range's last frame. With
            reactions, the regressed track plus a whole template at each onset the hazard fires.
        """
        track, logits = self.heads(mel_self, mel_partner, captions)
        return track if logits is None else self.with_reactions(track, self.onsets(logits))

    def with_reactions(self, track: torch.Tensor, onsets: torch.Tensor) -> torch.Tensor:
        """The regressed track ``(B, Fa, P)`` with a template placed at each fired onset ``(B, Fa, R)``."""
        return track + place(onsets, self.templates)

    def onsets(self, logits: torch.Tensor) -> torch.Tensor:
        """Fired reaction onsets ``(B, Fa, R)`` from the onset logits ``(B, Fa, R)``."""
        return fire(torch.sigmoid(logits), self.reaction_window, float(self.fire_level))

    def heads(self, mel_self: torch.Tensor, mel_partner: torch.Tensor,
              captions: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The regressed track ``(B, Fa, P)`` (without reactions when the net has them) and the onset logits
        ``(B, Fa, R)`` (None without reactions): what ``lpm train speech`` supervises."""
        return self.heads_of(self.features(mel_self, mel_partner, captions))

    def heads_of(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``heads`` from the per-frame features ``h (B, Fa, D)`` (``features``)."""
        return self.out(h), (self.onset(h) if self.reactions else None)  # (B, Fa, P), (B, Fa, R)

    def features(self, mel_self: torch.Tensor, mel_partner: torch.Tensor,
                 captions: list[str] | None = None) -> torch.Tensor:
        """The per-frame features ``(B, Fa, D)`` both heads read (causal in the partner, ``lookahead`` in own
        speech); an auxiliary objective of ``lpm train speech`` supervises them too (``partner_cues``)."""
        b, fa = mel_self.shape[:2]
        s = self.self_in(mel_self.reshape(b, fa, -1))  # (B, Fa, D)
        if self.lookahead:
            # Own speech ahead: frame f reads the features of frame f + L (the range's last frame at its end).
            idx = torch.arange(fa, device=s.device).add(self.lookahead).clamp(max=fa - 1)
            s = s[:, idx]
        x = s + self.partner_in(mel_partner.reshape(b, fa, -1))  # (B, Fa, D)
        if self.caption_in is not None:
            if captions is not None and len(captions) != b:
                raise ValueError(f"{len(captions)} captions for a batch of {b}")
            bag = caption_bag(captions if captions is not None else [""] * b, self.caption_buckets)  # (B, H)
            x = x + self.caption_in(bag.to(x))[:, None]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class MotionEmbedder(nn.Module):
    """Track ``(B, F, P)`` -> ``(B, F, D)``: a two-layer MLP whose output layer starts at zero, so adding the
    track to a trained DiT starts as the identity (ControlNet's zero convolution)."""

    def __init__(self, num_channels: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_channels, dim), nn.SiLU(), nn.Linear(dim, dim))

    def zero_output(self) -> None:
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, track: torch.Tensor) -> torch.Tensor:
        return self.mlp(track)


# ---- checkpoints of the speech network alone: safetensors + the DiT config it fits ----
def save_speech(path: str | Path, net: SpeechMotion, dit_cfg: Any, extra: dict[str, Any]) -> Path:
    """Write ``net``'s weights with the DiT config (``DiTConfig``) it was built for."""
    return save_checkpoint(path, net.state_dict(), to_dict(dit_cfg), SPEECH_KIND, extra)


def load_speech(path: str | Path, dit_cfg: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A speech checkpoint's ``(state_dict, extra)``; its DiT config must agree with ``dit_cfg`` on
    ``SPEECH_FIELDS`` (a clear error lists the differences)."""
    state, meta = load_checkpoint(path, kind=SPEECH_KIND)
    stored, mine = meta["config"], to_dict(dit_cfg)
    stored = {**SPEECH_FIELD_DEFAULTS, **stored, **reaction_settings(stored)}
    mine = {**mine, **reaction_settings(mine)}
    diff = [f"{k}: checkpoint {stored.get(k)!r} vs model {mine[k]!r}"
            for k in (*SPEECH_FIELDS, *REACTION_FIELDS) if stored.get(k) != mine[k]]
    if diff:
        raise LpmError(f"{path}: the speech network was trained for another DiT: {'; '.join(diff)}")
    return state, meta.get("extra", {})


def reaction_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``REACTION_FIELDS`` of a stored DiT config (defaults where it predates them; kinds as a tuple)."""
    out = {k: config.get(k, default) for k, default in REACTION_FIELDS.items()}
    out["reaction_kinds"] = tuple(out["reaction_kinds"])
    return out


def speech_reactions(path: str | Path) -> dict[str, Any]:
    """The reaction settings a speech checkpoint was trained with (what ``lpm export --speech`` carries over)."""
    settings = speech_settings(path)  # the settings only: the weights are read by ``load_speech``
    return {k: settings[k] for k in REACTION_FIELDS}


def speech_network(cfg: Any) -> SpeechMotion:
    """The ``SpeechMotion`` a DiT config (``DiTConfig``) builds."""
    return SpeechMotion(cfg.mel.n_mels, cfg.mel_steps_per_frame, cfg.motion_channels, cfg.speech_dim,
                        cfg.speech_dilations, cfg.self_audio_lookahead_frames, cfg.reaction_kinds,
                        cfg.reaction_frames, cfg.reaction_window, cfg.speech_caption_buckets)


# DiT weights whose shape depends on the track's channels (their channel axis), and the prefix of the speech
# network's own weights.
TRACK_AXES: dict[str, int] = {"motion_embed.mlp.0.weight": 1, "motion_map": 1}
SPEECH_PREFIX = "speech_motion."


def widen_track(state: dict[str, torch.Tensor], old: tuple[str, ...], new: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A DiT state dict for the track ``old`` re-laid for the track ``new`` (a superset): each kept channel's
    weights move to its new index, added channels get zeros (the model is unchanged while they are zero) and the
    speech network's weights are left out (one for ``new`` is loaded in their place)."""
    missing = [c for c in old if c not in new]
    if missing:
        raise LpmError(f"the new motion track drops channels {missing} the weights were trained with")
    index = torch.tensor([new.index(c) for c in old])
    out = {}
    for key, value in state.items():
        if key.startswith(SPEECH_PREFIX):
            continue
        axis = TRACK_AXES.get(key)
        if axis is not None:
            shape = list(value.shape)
            shape[axis] = len(new)
            wide = value.new_zeros(shape)
            wide.index_copy_(axis, index, value)
            value = wide
        out[key] = value
    return out


def speech_settings(path: str | Path) -> dict[str, Any]:
    """The DiT config fields a speech checkpoint defines (``SPEECH_FIELDS`` but the mel, and the reactions'): what
    a DiT takes on when this network is swapped into it."""
    from lpm.models.dit_config import stored_dit_config  # dit_config imports this module

    meta = read_metadata(path)
    if meta["kind"] != SPEECH_KIND:
        raise CheckpointError(f"checkpoint {path} holds {meta['kind']!r} weights, expected {SPEECH_KIND!r}")
    cfg = stored_dit_config(meta["config"])  # fields added since it was saved at their defaults, lists as tuples
    return {k: getattr(cfg, k) for k in (*SPEECH_FIELDS, *REACTION_FIELDS) if k != "mel"}
