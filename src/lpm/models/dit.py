"""``DiT``: the LPM-style diffusion transformer (Wan2.1 backbone, LPM 1.0 conditioning), one forward for the
bidirectional Base model, block-causal training of the Online model, and cached streaming.

The network only predicts (the flow-matching objective owns the loss, ``lpm.diffusion``). Flow time ``t``
is in [0, 1], ``t = 0`` clean data and ``t = 1`` noise, given per sample ``(B,)`` or per frame
``(B, F)`` so the Online model denoises each chunk at its own ``t``
(Self-Forcing / CausVid "diffusion forcing" schedules).

Streaming::

    cache = KVCache.empty(cfg, batch_size=1)
    model.prefill(cache, references)                   # references: computed once, never evicted
    start, end = model.audio_frame_range(cache.chunks_seen * cfg.frames_per_chunk, cfg.frames_per_chunk)
    cond = Conditioning(text, mask, mel_self[:, start:end], mel_partner[:, start:end],
                        audio_start_frame=start)
    v = model(x_t, t, cond, cache=cache)               # denoising steps: the cache is read, not written
    model(x_0, zeros, cond, cache=cache, update_cache=True)  # commit the clean chunk (CausVid)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from lpm.audio.encoder import PARTNER_STREAM, SELF_STREAM, AudioEncoder
from lpm.config import to_dict
from lpm.models.attention import attend, plan_chunk, plan_full, plan_references
from lpm.models.blocks import AudioWindow, CrossInputs, DiTBlock, audio_window
from lpm.models.chunk_context import ChunkContext
from lpm.models.conditioning import (
    Conditioning,
    PoseEmbedder,
    ReferenceEmbedder,
    References,
    patchify,
    unpatchify,
)
from lpm.models.dit_config import DiTConfig, stored_dit_config
from lpm.models.expression import (
    BROW_EXEMPLAR,
    EXPRESSION_FLOOR,
    GLOBAL,
    brow_exemplar_weight,
    emotion_channels,
    exemplar_of,
)
from lpm.models.idle_motion import IdleMotion
from lpm.models.kv_cache import KVCache
from lpm.models.motion_track import MotionEmbedder, MotionInputs, bound_track, speech_network
from lpm.models.reference_warp import ReferenceWarp
from lpm.models.rope import Rope3D
from lpm.models.text import ByteTextEncoder
from lpm.training.checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint

CHECKPOINT_KIND = "dit"


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``1000 t`` (DiT / Wan2.1 scale). ``(...) -> (..., dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class Head(nn.Module):
    """Final adaLN + linear to ``C * p * p`` per token (zero-initialised, DiT)."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_dim)
        self.modulation = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x (B, F, N, D)``, ``e (B, F, D)`` -> ``(B, F, N, C*p*p)``."""
        shift, scale = (e[:, :, None, None] + self.modulation).unbind(3)  # (B, F, 1, D) each
        return self.linear(self.norm(x) * (1 + scale) + shift)


class DiT(nn.Module):
    """The LPM-style DiT. See the module docstring for the streaming protocol.

    Args:
        cfg: the resolved ``DiTConfig``.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.dim, cfg.patch_size, cfg.latent_channels
        self.patch_embed = nn.Linear(c * p * p, d)
        if cfg.reference_concat:
            # Linear(concat(x, ref)) = patch_embed(x) + reference_in(ref); zero at init, so it starts as without.
            self.reference_in = nn.Linear(c * p * p, d)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # shared adaLN (Wan2.1)
        self.pose_embed = PoseEmbedder(cfg.pose_dim, d, cfg.pose_dropout)
        self.reference_embed = ReferenceEmbedder(cfg)
        self.text_encoder = ByteTextEncoder(cfg.text_dim, cfg.text_layers, cfg.text_heads, cfg.text_max_bytes)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.audio_encoder = AudioEncoder(
            cfg.mel.n_mels,
            cfg.mel_steps_per_frame,
            cfg.audio_dim,
            cfg.audio_layers,
            cfg.audio_kernel_steps,
            cfg.audio_tokens_per_frame,
        )
        if cfg.motion_channels:
            self.speech_motion = speech_network(cfg)
            self.motion_embed = MotionEmbedder(len(cfg.motion_channels), d)
            if cfg.motion_spatial:
                # Per token position, per channel, a direction added to that token: the mouth tokens learn what an
                # open jaw adds to them directly (RoPE gives tokens no absolute position of their own, so a
                # frame-wide embedding must be routed to the mouth by attention first).
                self.motion_map = nn.Parameter(torch.zeros(cfg.tokens_per_frame, len(cfg.motion_channels), d))
        if cfg.reference_warp:
            self.reference_warp = ReferenceWarp(cfg.motion_channels, cfg.latent_height, cfg.latent_width)
        if cfg.idle_motion:
            self.idle_motion = IdleMotion(cfg.motion_channels, cfg.latent_channels)
        self.blocks = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.num_blocks))
        self.head = Head(d, c * p * p, cfg.eps)
        self.rope = Rope3D(cfg.head_dim, cfg.rope_theta)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier for block and embedder linears, zero output head (DiT: the model starts as the identity)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("text_encoder"):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.restart_head()
        if self.cfg.motion_channels:
            self.motion_embed.zero_output()
        if self.cfg.reference_concat:
            nn.init.zeros_(self.reference_in.weight)

    def restart_head(self) -> None:
        """Zero the output head, as at init: a model fine-tuned into ``reference_residual`` from weights without it
        starts as the still reference (the head predicted the whole frame; now it predicts what differs)."""
        nn.init.zeros_(self.head.linear.weight)
        nn.init.zeros_(self.head.linear.bias)

    # ---- conditioning helpers ----
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ``(tokens (B, L, text_dim), mask (B, L))`` through the model's text encoder."""
        return self.text_encoder.encode(texts)

    def audio_frame_range(self, first_frame: int, num_frames: int) -> tuple[int, int]:
        """Global audio frames ``[start, end)`` a forward of frames ``first_frame ..`` needs: the windows,
        the encoder's causal history and the declared own-speech lookahead."""
        before, after = self.audio_margin()
        return max(0, first_frame - before), first_frame + num_frames + after

    def audio_margin(self) -> tuple[int, int]:
        """Frames of audio a window needs before its first frame and after its last: ``audio_frame_range``
        without the clipping at the stream's start (a window inside a clip has real audio before it)."""
        before = max(self.cfg.audio_window_frames + self.audio_encoder.history_frames, self.cfg.speech_history_frames)
        return before, self.cfg.audio_lookahead_frames

    def predict_motion(self, cond: Conditioning, first_frame: int, num_frames: int) -> torch.Tensor:
        """The motion track of frames ``first_frame ..`` predicted from ``cond``'s audio: ``(B, F, P)``, times
        ``cond.track_gain`` and clipped to ``cond.track_range`` when set."""
        start = first_frame - cond.audio_start_frame
        track = self.speech_motion(cond.audio_self, cond.audio_partner, cond.captions)  # (B, Fa, P)
        if start < 0 or start + num_frames > track.shape[1]:
            raise ValueError(f"the audio (frames {cond.audio_start_frame}..{cond.audio_start_frame + track.shape[1]})"
                             f" does not cover frames {first_frame}..{first_frame + num_frames}")
        track = track[:, start:start + num_frames]
        track = track if cond.track_gain is None else track * cond.track_gain.to(track)
        return bound_track(track, cond.track_range)

    def _motion(self, cond: Conditioning, first_frame: int, num_frames: int,
                cache: KVCache | None = None) -> MotionInputs | None:
        """The track's embedding ``(B, F, D)``, with ``motion_spatial`` its per-token part ``(B, F, N, D)``, and
        the track ``(B, F, P)`` itself: from the given track, the predicted one where asked (or when none is
        given), dropped per sample in training (an exact zero, as with no track). With ``idle_motion`` the predicted
        track gets the idle head motion of the global reference (``reference_latent``)."""
        if not self.cfg.motion_channels:
            return None
        track = cond.motion
        if track is None or cond.motion_from_audio is not None:
            predicted = self.predict_motion(cond, first_frame, num_frames)
            if self.cfg.idle_motion:
                ref = self.reference_latent(cond, cache, "idle_motion")
                predicted = predicted + self.idle_motion(ref, first_frame, num_frames).to(predicted)
                predicted = bound_track(predicted, cond.track_range)  # the idle sway kept inside the range too
            if track is not None:
                use = cond.motion_from_audio.to(predicted.device)  # (B,) or (B, P)
                use = use[:, None, None] if use.dim() == 1 else use[:, None, :]
                track = torch.where(use, predicted, track.to(predicted))
            else:
                track = predicted
        track = track.to(self.patch_embed.weight.dtype)  # (B, F, P)
        if self.training and self.cfg.motion_dropout > 0:
            keep = torch.rand(track.shape[0], 1, 1, device=track.device) >= self.cfg.motion_dropout
            track = track * keep
        e = self.motion_embed(track)  # (B, F, D)
        if self.training and self.cfg.motion_dropout > 0:
            e = e * keep  # the MLP's biases must not leak through a dropped track
        tokens = torch.einsum("bfp,npd->bfnd", track, self.motion_map) if self.cfg.motion_spatial else None
        return MotionInputs(e, tokens, track)

    def _modulation(self, t: torch.Tensor, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-time embedding ``e (..., D)`` (plus ``extra``, e.g. the motion track's, as DiT adds its class
        embedding) and the six adaLN vectors ``(..., 6, D)``."""
        feats = timestep_features(t, self.cfg.time_freq_dim).to(self.patch_embed.weight.dtype)
        e = self.time_embed(feats)  # (..., D)
        if extra is not None:
            e = e + extra
        return e, self.time_proj(e).unflatten(-1, (6, self.cfg.dim))  # (..., 6, D)

    def _references(self, refs: References | None, batch: int, device) -> tuple:
        if refs is None or not refs.kinds:
            return None, None, torch.zeros(0, 3, dtype=torch.float64)
        x_ref, positions = self.reference_embed(refs)  # (B, R, D), (R, 3)
        t_ref = torch.full((batch, 1), self.cfg.reference_time, device=device)
        return x_ref, self._modulation(t_ref)[1], positions

    def _cross_inputs(self, cond: Conditioning, first_frame: int, num_frames: int) -> CrossInputs:
        cfg = self.cfg
        fa = cond.audio_self.shape[1]
        if cond.audio_partner.shape[1] != fa or fa == 0:
            raise ValueError("audio_self and audio_partner must cover the same, non-empty frame range")
        audio_self, window_self = self._window_tokens(cond, SELF_STREAM, first_frame, num_frames,
                                                      cfg.self_audio_before_frames, cfg.self_audio_lookahead_frames)
        audio_partner, window_partner = self._window_tokens(cond, PARTNER_STREAM, first_frame, num_frames,
                                                            cfg.partner_audio_before_frames,
                                                            cfg.partner_audio_after_frames)
        return CrossInputs(text=self.text_proj(cond.text_tokens), text_mask=cond.text_mask.bool(),
                           audio_self=audio_self, audio_partner=audio_partner,
                           window_self=window_self, window_partner=window_partner)

    def _window_tokens(self, cond: Conditioning, stream: int, first_frame: int, num_frames: int, before: int,
                       after: int) -> tuple[torch.Tensor, AudioWindow]:
        """One stream's audio tokens ``(B, n, A, Da)`` for the ``n`` frames its windows over frames
        ``first_frame ..`` read, and those windows indexed into them.

        A streamed chunk's audio spans the speech network's history (~90 frames) while its windows read a few
        frames; the encoder is causal with ``history_frames`` of receptive field, so encoding from that many
        frames before the first one read gives the same tokens as encoding everything (issue 13: 5x less
        encoder and audio key/value work per chunk). Masked window entries are clamped into the slice.
        """
        mel = cond.audio_self if stream == SELF_STREAM else cond.audio_partner  # (B, Fa, k, M)
        fa, start = mel.shape[1], cond.audio_start_frame
        lo = min(max(0, first_frame - before - start), fa - 1)
        hi = max(min(fa, first_frame + num_frames + after - start), lo + 1)
        begin = max(0, lo - self.audio_encoder.history_frames)
        tokens = self.audio_encoder(mel[:, begin:hi], stream)[:, lo - begin:]  # (B, hi - lo, A, Da)
        # Frames ``lo .. hi`` are exactly the window's frames inside the audio: the validity is unchanged.
        return tokens, audio_window(first_frame, num_frames, start + lo, hi - lo, before, after, mel.device)

    def global_reference(self, refs: References | None, user: str) -> torch.Tensor:
        """The global reference's latent ``(B, C, h, w)``, checked to be a frame's latent (``user`` names the
        option that needs it in the error)."""
        if refs is None or "global" not in refs.kinds:
            raise ValueError(f"{user} needs the global reference (kind 'global') in cond.references")
        latent = refs.latents[refs.kinds.index("global")]  # (B, C, h, w)
        cfg = self.cfg
        if latent.shape[1:] != (cfg.latent_channels, cfg.latent_height, cfg.latent_width):
            raise ValueError(f"the global reference latent {tuple(latent.shape[1:])} is not a frame's latent "
                             f"({cfg.latent_channels}, {cfg.latent_height}, {cfg.latent_width}): {user} "
                             f"uses it token by token")
        return latent

    def canvas_references(self, refs: References | None) -> References:
        """The references ``expression_canvas`` draws on: the global one first, then each ``expr_<name>`` whose
        emotion is a track channel, as ``(B, C, h, w)`` latents."""
        latents, kinds = [self.global_reference(refs, "expression_canvas")], [GLOBAL]
        wanted = {exemplar_of(c) for c in emotion_channels(self.cfg.motion_channels)}
        for kind, latent in zip(refs.kinds, refs.latents):
            if kind in wanted:
                latents.append(latent)
                kinds.append(kind)
        return References(latents, kinds)

    def canvas(self, refs: References, track: torch.Tensor | None, frames: int,
               brow_exemplar: tuple[float, float] | None = None) -> torch.Tensor:
        """The frame-aligned reference of each frame ``(B, F, C, h, w)`` from ``canvas_references``' ``refs``: the
        exemplar of the frame's strongest emotion channel in ``track (B, F, P)`` where it reaches
        ``EXPRESSION_FLOOR`` and ``refs`` hold it (``expression_kind``, frame by frame; with ``expression_blend``
        the global latent moved toward it by the channel's value, clamped to 0..1), else the global latent (no
        track, or no ``expression_canvas``: the global latent everywhere). With ``brow_exemplar`` ``(lo, hi)``
        and the surprised exemplar in ``refs``, each frame also moves toward it by ``brow_exemplar_weight`` of
        its brow raise (the DiT draws a brow raise of its track faintly; the exemplar has the character's raised
        brows)."""
        out = refs.latents[0][:, None].expand(-1, frames, -1, -1, -1)
        if not self.cfg.expression_canvas or track is None or len(refs.kinds) == 1:
            return out
        channels = self.cfg.motion_channels
        names = emotion_channels(channels)
        emotion = track[..., [channels.index(c) for c in names]].float()  # (B, F, E)
        strongest, best = emotion.max(-1)  # the first of equal values, as expression_kind
        exemplars = [exemplar_of(c) for c in names]
        picked = {}
        for kind, latent in zip(refs.kinds[1:], refs.latents[1:]):
            pick = picked[kind] = (strongest >= EXPRESSION_FLOOR) & (best == exemplars.index(kind))  # (B, F)
            if self.cfg.expression_blend:
                weight = (strongest.clamp(0, 1) * pick).to(out)[..., None, None, None]  # (B, F, 1, 1, 1)
                out = out + weight * (latent - refs.latents[0])[:, None].to(out)
            else:
                out = torch.where(pick[..., None, None, None], latent[:, None].to(out), out)
        if brow_exemplar is not None and BROW_EXEMPLAR in picked and "brow_raise" in channels:
            # not where the canvas already is the surprised exemplar's (its emotion's pick)
            weight = brow_exemplar_weight(track[..., channels.index("brow_raise")], brow_exemplar)
            weight = weight * ~picked[BROW_EXEMPLAR]
            lifted = refs.latents[refs.kinds.index(BROW_EXEMPLAR)] - refs.latents[0]  # (B, C, h, w)
            out = out + weight.to(out)[..., None, None, None] * lifted[:, None].to(out)
        return out

    def _canvas(self, cond: Conditioning, cache: KVCache | None, track: torch.Tensor | None,
                frames: int) -> torch.Tensor:
        """``canvas`` of the session's references (``cache.canvas`` once prefilled) or of ``cond``'s."""
        refs = cache.canvas if cache is not None and cache.is_prefilled else self.canvas_references(cond.references)
        return self.canvas(refs, track, frames, cond.brow_exemplar)

    def reference_input(self, refs: References | None) -> torch.Tensor:
        """The global reference's per-token input ``(B, N, D)`` of ``reference_concat`` (a clear error without it)."""
        latent = self.global_reference(refs, "reference_concat")
        return self.reference_in(patchify(latent[:, None].to(self.reference_in.weight.dtype),
                                          self.cfg.patch_size)[:, 0])

    def reference_latent(self, cond: Conditioning, cache: KVCache | None, user: str) -> torch.Tensor:
        """The global reference latent ``(B, C, h, w)``: the session's (``cache.reference_latent``) once the cache is
        prefilled, else ``cond``'s (``global_reference``; ``user`` names the option in its errors)."""
        if cache is not None and cache.is_prefilled:
            return cache.reference_latent
        return self.global_reference(cond.references, user)

    def finish_output(self, out: torch.Tensor, cond: Conditioning, cache: KVCache | None,
                      track: torch.Tensor | None) -> torch.Tensor:
        """The head's ``(B, F, C, h, w)`` -> the prediction: plus the global reference (each frame's ``canvas``
        with ``expression_canvas``) with ``reference_residual`` (from the cache once it is prefilled), moved to the
        head pose of ``track`` ``(B, F, P)`` with ``reference_warp`` (no track: the still reference), else
        unchanged."""
        if not self.cfg.reference_residual:
            return out
        if self.cfg.expression_canvas:
            ref = self._canvas(cond, cache, track, out.shape[1])  # (B, F, C, h, w)
        else:
            ref = self.reference_latent(cond, cache, "reference_residual")  # (B, C, h, w)
        if self.cfg.reference_warp and track is not None:
            return out + self.reference_warp(ref, track).to(out.dtype)
        return out + (ref if ref.dim() == 5 else ref[:, None]).to(out.dtype)

    # ---- streaming ----
    @torch.no_grad()
    def prefill(self, cache: KVCache, references: References | None) -> None:
        """Compute every layer's reference keys/values once and store them in ``cache``."""
        device = self.patch_embed.weight.device
        x_ref, e_ref, positions = self.prefill_inputs(cache, references)
        if x_ref is None:
            empty = cache.slot_k[0][:, :, :0]
            cache.set_references([(empty, empty)] * len(self.blocks), positions)
            return
        groups = plan_references(self.rope, positions, device)
        kvs = []
        for block in self.blocks:
            _, x_ref, kv = block(None, None, x_ref, e_ref, lambda q, k, v, g=groups: attend(q, k, v, g), None)
            kvs.append(kv)
        cache.set_references(kvs, positions)

    def prefill_inputs(self, cache: KVCache, references: References | None) -> tuple:
        """The reference tokens ``(B, R, D)``, their modulation and positions ``(R, 3)`` a prefill runs through the
        blocks (None, None, empty without references); stores the per-session reference input in ``cache``."""
        if self.cfg.reference_concat:
            cache.reference_input = self.reference_input(references)
        if self.cfg.reference_residual:
            cache.reference_latent = self.global_reference(references, "reference_residual").detach()
        if self.cfg.expression_canvas:
            canvas = self.canvas_references(references)
            cache.canvas = References([x.detach() for x in canvas.latents], canvas.kinds)
        return self._references(references, cache.slot_k[0].shape[0], self.patch_embed.weight.device)

    @torch.no_grad()
    def prepare_chunk(self, cond: Conditioning, cache: KVCache,
                      attention_dtype: torch.dtype | None = None) -> ChunkContext:
        """What every forward of the next chunk (``cache.chunks_seen``) shares: its rotated cache, cross-attention
        keys/values, audio tokens and motion track (``lpm.models.chunk_context``). Pass it as ``context`` to
        each of the chunk's forwards, the commit included; the result equals forwards without it (with
        ``attention_dtype``, e.g. bf16, the self-attention runs in that dtype: close, not equal)."""
        cfg, device = self.cfg, self.patch_embed.weight.device
        if not cache.is_prefilled:
            self.prefill(cache, cond.references)
        first_frame, f = cache.chunks_seen * cfg.frames_per_chunk, cfg.frames_per_chunk
        groups, num_slots = plan_chunk(cfg, self.rope, cache, device)
        cross = self._cross_inputs(cond, first_frame, f)
        memory = [block.cross_memory(cross) for block in self.blocks]
        return ChunkContext.build(cache, groups[0], num_slots, cross, memory,
                                  self._motion(cond, first_frame, f, cache), attention_dtype)

    # ---- the forward ----
    def embed_video(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, cache: KVCache | None = None,
                    context: ChunkContext | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor | None]:
        """The video tokens entering the blocks and their modulation (checks, patch embedding, reference input,
        pose, motion track, flow time): ``x (B, F, N, D)``, ``e (B, F, D)``, ``e6 (B, F, 6, D)`` and the motion
        track ``(B, F, P)`` (None without one, for ``finish_output``). Arguments as ``forward``'s; shared with
        ``lpm.parallel.SequenceParallelDiT``, which shards ``x`` afterwards."""
        cfg = self.cfg
        b, f, c, h, w = x_t.shape
        if c != cfg.latent_channels or (h, w) != (cfg.latent_height, cfg.latent_width):
            raise ValueError(
                f"latents {tuple(x_t.shape)} do not fit the config (C={cfg.latent_channels}, "
                f"h={cfg.latent_height}, w={cfg.latent_width})"
            )
        if cond.audio_self.shape[2:3] != (cfg.mel_steps_per_frame,):
            raise ValueError(f"audio has {cond.audio_self.shape[2]} mel steps per frame, the DiT reads "
                             f"{cfg.mel_steps_per_frame} per latent frame (t_down {cfg.t_down}): group the video "
                             f"frames' features with lpm.audio.mel.per_latent_frame")
        t = t[:, None].expand(b, f) if t.dim() == 1 else t
        x = self.patch_embed(patchify(x_t, cfg.patch_size))  # (B, F, N, D)
        first_frame = 0 if cache is None else cache.chunks_seen * cfg.frames_per_chunk
        if context is not None and (cache is None or context.chunk != cache.chunks_seen):
            raise ValueError(f"the chunk context was prepared for chunk {context.chunk}, this forward is "
                             f"{'uncached' if cache is None else f'chunk {cache.chunks_seen}'}")
        motion = context.motion if context is not None else self._motion(cond, first_frame, f, cache)
        if cfg.expression_canvas and cfg.reference_concat:  # per frame: each frame's canvas
            canvas = self._canvas(cond, cache, None if motion is None else motion.track, f)
            x = x + self.reference_in(patchify(canvas.to(self.reference_in.weight.dtype), cfg.patch_size))
        elif cfg.reference_concat:
            x = x + (self.reference_input(cond.references) if cache is None or not cache.is_prefilled
                     else cache.reference_input)[:, None]
        if cond.pose is not None:
            x = x + self.pose_embed(cond.pose)[:, :, None]
        motion_e = None
        if motion is not None:
            motion_e = motion.embedding  # (B, F, D)
            x = x + motion_e[:, :, None]
            if motion.tokens is not None:
                x = x + motion.tokens  # (B, F, N, D)
        e, e6 = self._modulation(t, motion_e)  # (B, F, D), (B, F, 6, D)
        return x, e, e6, None if motion is None else motion.track

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        cache: KVCache | None = None,
        update_cache: bool = False,
        mode: str | None = None,
        context: ChunkContext | None = None,
        keys_only: bool = False,
    ) -> torch.Tensor | None:
        """Predict the flow-matching target for ``x_t``.

        Args:
            x_t: ``(B, F, C, h, w)`` noisy latents (cached: one chunk, ``F = frames_per_chunk``).
            t: ``(B,)`` or ``(B, F)`` flow time in [0, 1].
            cond: text, audio (covering ``audio_frame_range``), optional pose ``(B, F, 4)`` and references.
            cache: a ``KVCache`` for streaming the Online model; the chunk is ``cache.chunks_seen``.
            update_cache: store this chunk's keys/values (call it on the clean chunk) and advance.
            mode: ``bidirectional`` or ``block_causal``; default ``cfg.attention``; a cache implies
                block-causal.
            context: ``prepare_chunk(cond, cache)`` of this chunk (cached forwards only): its shared parts
                are taken from there instead of recomputed; ``cond``'s audio and text are then not read.
            keys_only: a cache commit that returns nothing (needs ``update_cache``): the last block stops at its
                keys/values and the head does not run; the cache equals a full forward's.
        Returns:
            ``(B, F, C, h, w)``, or None with ``keys_only``.
        """
        cfg = self.cfg
        if keys_only and (cache is None or not update_cache):
            raise ValueError("keys_only is a cache commit: it needs a cache and update_cache=True")
        b, f, c, h, w = x_t.shape
        x, e, e6, track = self.embed_video(x_t, t, cond, cache, context)  # (B,F,N,D), (B,F,D), (B,F,6,D), (B,F,P)
        first_frame = 0 if cache is None else cache.chunks_seen * cfg.frames_per_chunk
        device = x.device
        if cache is None:
            x_ref, e_ref, ref_pos = self._references(cond.references, b, device)
            groups = plan_full(cfg, self.rope, ref_pos, f, mode or cfg.attention, device)
            num_slots = 0
        else:
            if f != cfg.frames_per_chunk:
                raise ValueError(
                    f"a cached forward takes one chunk of {cfg.frames_per_chunk} frames, got {f}"
                )
            if not cache.is_prefilled:
                self.prefill(cache, cond.references)
            x_ref = e_ref = None
            if context is None:
                groups, num_slots = plan_chunk(cfg, self.rope, cache, device)
        cross = context.cross if context is not None else self._cross_inputs(cond, first_frame, f)
        new_kv = []
        for layer, block in enumerate(self.blocks):
            if keys_only and layer == len(self.blocks) - 1:
                new_kv.append(block.keys_values(x, e6))  # the last block's output feeds only the head
                break
            memory = None
            if context is not None:
                attention, memory = context.attention(layer), context.cross_memory[layer]
            elif cache is None:

                def attention(q, k, v):
                    return attend(q, k, v, groups)
            else:
                prefix_k, prefix_v = cache.prefix(layer, num_slots)

                def attention(q, k, v, pk=prefix_k, pv=prefix_v):
                    k_all = torch.cat([*(t.to(k.dtype) for t in pk), k], 2)  # (B, H, R + n*Nc + Nc, d)
                    v_all = torch.cat([*(t.to(v.dtype) for t in pv), v], 2)
                    return attend(q, k_all, v_all, groups)

            x, x_ref, kv = block(x, e6, x_ref, e_ref, attention, cross, memory)
            new_kv.append(kv)
        if cache is not None and update_cache:
            cache.commit(new_kv)
        if keys_only:
            return None
        out = self.head(x, e)  # (B, F, N, C*p*p)
        return self.finish_output(unpatchify(out, cfg.patch_size, c, h, w), cond, cache, track)


# ---- checkpoints: safetensors + resolved config; strict load ----
def save_dit(path: str | Path, model: DiT, extra: dict | None = None) -> Path:
    """Write ``model``'s weights with its resolved config in the metadata."""
    return save_checkpoint(path, model.state_dict(), to_dict(model.cfg), CHECKPOINT_KIND, extra)


def load_dit(path: str | Path, expect: DiTConfig | None = None, device: str = "cpu") -> DiT:
    """Build a ``DiT`` from a checkpoint's stored config and load its weights strictly.

    Args:
        expect: if given, the stored config must equal it (e.g. ``latent_channels`` of the VAE in use);
            differing fields are listed in the error.
    """
    state, meta = load_checkpoint(path, kind=CHECKPOINT_KIND, device=device)
    cfg = stored_dit_config(meta["config"])
    if expect is not None and cfg != expect:
        diff = [
            f"{k}: checkpoint {v!r} vs expected {to_dict(expect)[k]!r}"
            for k, v in to_dict(cfg).items()
            if to_dict(expect)[k] != v
        ]
        raise CheckpointError(f"{path}: DiT config differs from the expected one: {'; '.join(diff)}")
    model = DiT(cfg).to(device)
    load_into(model, state, source=str(path))
    return model
