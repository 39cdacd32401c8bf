"""The DiT block (Wan2.1 layout, LPM 1.0 audio routing): adaLN self-attention -> cross-attention -> adaLN MLP.

Cross-attention keys are the caption tokens plus a window of audio tokens around each query frame: the
character's own speech in even blocks (a local window with a small lookahead, for lip sync), the partner's
speech in odd blocks (a wider, past-leaning window, for reactions), each with its own K/V projections and a
learned embedding of the frame offset inside the window (LPM 1.0 arXiv 2604.07823). Each frame's queries see
only their own window, so the cross-attention runs as one batched SDPA over (batch x frame).

Reference tokens pass through self-attention (seeing references only) and the MLP, modulated at the clean flow
time; they skip cross-attention, so they depend on nothing that changes during a session and are cached once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lpm.models.dit_config import DiTConfig


@dataclass
class AudioWindow:
    """Audio frames each query frame reads: ``index (F, Wn)`` into the audio tokens, ``valid (F, Wn)``."""

    index: torch.Tensor
    valid: torch.Tensor


def audio_window(
    first_frame: int,
    num_frames: int,
    audio_start: int,
    audio_frames: int,
    before: int,
    after: int,
    device=None,
) -> AudioWindow:
    """Window of global frames ``f - before .. f + after`` for ``f = first_frame ..``; frames outside the
    given audio (``audio_start .. audio_start + audio_frames``) are masked."""
    f = first_frame + torch.arange(num_frames, device=device)[:, None]
    a = f + torch.arange(-before, after + 1, device=device)[None] - audio_start  # (F, Wn)
    valid = (a >= 0) & (a < audio_frames)
    return AudioWindow(a.clamp(0, max(audio_frames - 1, 0)), valid)


@dataclass
class CrossInputs:
    """Per-forward inputs of every block's cross-attention."""

    text: torch.Tensor  # (B, L, D) projected caption tokens
    text_mask: torch.Tensor  # (B, L) bool
    audio_self: torch.Tensor  # (B, Fa, A, Da) own-speech tokens
    audio_partner: torch.Tensor  # (B, Fa, A, Da) partner tokens
    window_self: AudioWindow  # for the even blocks
    window_partner: AudioWindow  # for the odd blocks


@dataclass
class CrossMemory:
    """One block's cross-attention keys/values for a forward's frames (``WindowedCrossAttention.memory``)."""

    k: torch.Tensor  # (B*F, H, Lk, d): caption keys then the frame's audio-window keys
    v: torch.Tensor  # (B*F, H, Lk, d)
    mask: torch.Tensor  # (B*F, 1, 1, Lk) bool, True = attend
    text_length: int  # L: the first L keys are the caption's


class SelfAttention(nn.Module):
    """Q/K/V/O projections with RMS qk-norm; the attention pattern itself is supplied by the caller."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, H, N, d)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N, D)`` -> un-rotated ``q, k, v`` each ``(B, H, N, d)``."""
        return (self.heads(self.norm_q(self.q(x))), *self.kv(x))

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, D)`` -> un-rotated ``k, v`` each ``(B, H, N, d)`` (``qkv`` without the queries)."""
        return self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))


class WindowedCrossAttention(nn.Module):
    """Per-frame cross-attention to ``[caption tokens | the frame's audio window]``.

    Args:
        dim: D. num_heads: H. audio_dim: Da of the audio tokens.
        window: Wn, frames in this block's audio window (before + 1 + after).
    """

    def __init__(self, dim: int, num_heads: int, audio_dim: int, window: int, qk_norm: bool, eps: float,
                 separate: bool = True):
        super().__init__()
        self.num_heads, self.separate = num_heads, separate
        self.q, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.text_k, self.text_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.audio_k, self.audio_v = nn.Linear(audio_dim, dim), nn.Linear(audio_dim, dim)
        self.audio_offset = nn.Parameter(torch.zeros(window, dim))  # which frame of the window a key is from
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def memory(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor,
        window: AudioWindow,
    ) -> CrossMemory:
        """Keys, values and mask of every frame's ``[caption | audio window]``: they depend on the conditioning
        only, so a chunk computes them once for all its denoising steps (``DiT.prepare_chunk``).

        Args:
            text: ``(B, L, D)``. text_mask: ``(B, L)``. audio: ``(B, Fa, A, Da)``.
            window: this block's ``AudioWindow`` over the F query frames.
        """
        b, d = text.shape[0], text.shape[2]
        f, wn = window.index.shape
        h = self.num_heads
        a = audio.shape[2]
        ka = self.audio_k(audio)[:, window.index] + self.audio_offset[:, None]  # (B, F, Wn, A, D)
        va = self.audio_v(audio)[:, window.index]  # (B, F, Wn, A, D)
        kt, vt = self.text_k(text), self.text_v(text)  # (B, L, D)
        length = text.shape[1]
        k = torch.cat(
            [kt[:, None].expand(b, f, length, d), ka.reshape(b, f, wn * a, d)], dim=2
        )  # (B, F, Lk, D)
        v = torch.cat([vt[:, None].expand(b, f, length, d), va.reshape(b, f, wn * a, d)], dim=2)
        k = self.norm_k(k)
        mask = torch.cat(
            [
                text_mask[:, None].expand(b, f, length),
                window.valid.repeat_interleave(a, dim=1)[None].expand(b, f, wn * a),
            ],
            dim=2,
        )
        k = k.reshape(b * f, -1, h, d // h).transpose(1, 2)  # (B*F, H, Lk, d)
        v = v.reshape(b * f, -1, h, d // h).transpose(1, 2)
        return CrossMemory(k, v, mask.reshape(b * f, 1, 1, -1), length)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        window: AudioWindow | None = None,
        memory: CrossMemory | None = None,
    ) -> torch.Tensor:
        """Args:
            x: ``(B, F, N, D)`` video tokens. text: ``(B, L, D)``. text_mask: ``(B, L)``.
            audio: ``(B, Fa, A, Da)``. window: this block's ``AudioWindow`` over the F frames.
            memory: ``self.memory(text, text_mask, audio, window)`` computed beforehand (then the rest is unused).
        Returns:
            ``(B, F, N, D)``.
        """
        b, f, n, d = x.shape
        h = self.num_heads
        if memory is None:
            memory = self.memory(text, text_mask, audio, window)
        k, v, mask, length = memory.k, memory.v, memory.mask, memory.text_length
        q = self.norm_q(self.q(x))
        q = q.reshape(b * f, n, h, -1).transpose(1, 2)  # (B*F, H, N, d)
        if not self.separate:  # one softmax over [caption | audio window]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B*F, H, N, d)
        else:  # a softmax each, summed; a group with no valid key (e.g. audio off the clip) adds nothing
            o = 0
            for part in (slice(0, length), slice(length, None)):
                m = mask[..., part]
                some = m.any(-1, keepdim=True)  # (B*F, 1, 1, 1)
                # rows with no valid key attend to all (finite values and gradients), then count for nothing
                out = F.scaled_dot_product_attention(q, k[:, :, part], v[:, :, part], attn_mask=m | ~some)
                o = o + out * some
        return self.o(o.transpose(1, 2).reshape(b, f, n, d))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """One block. Even ``index``: own-speech window; odd: partner window (LPM 1.0)."""

    def __init__(self, cfg: DiTConfig, index: int) -> None:
        super().__init__()
        d, eps = cfg.dim, cfg.eps
        self.partner = index % 2 == 1
        window = (
            cfg.partner_audio_before_frames + 1 + cfg.partner_audio_after_frames
            if self.partner
            else cfg.self_audio_before_frames + 1 + cfg.self_audio_lookahead_frames
        )
        self.norm1 = nn.LayerNorm(d, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.qk_norm, eps)
        self.norm2 = nn.LayerNorm(d, eps=eps)  # Wan2.1's affine cross-attention norm
        self.cross_attn = WindowedCrossAttention(d, cfg.num_heads, cfg.audio_dim, window, cfg.qk_norm, eps,
                                                 separate=cfg.audio_attention == "separate")
        self.norm3 = nn.LayerNorm(d, eps=eps, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d)
        )
        # Wan2.1 shares one time projection across blocks and adds a learned per-block offset (6 x D here
        # instead of DiT's 6 D^2 per block: 6.3B parameters saved at 17B scale).
        self.modulation = nn.Parameter(torch.randn(6, d) / d**0.5)

    def cross_memory(self, cross: CrossInputs) -> CrossMemory:
        """This block's cross-attention keys/values: own speech (even blocks) or the partner's (odd)."""
        window = cross.window_partner if self.partner else cross.window_self
        audio = cross.audio_partner if self.partner else cross.audio_self
        return self.cross_attn.memory(cross.text, cross.text_mask, audio, window)

    def forward(
        self,
        x: torch.Tensor | None,
        e: torch.Tensor | None,
        x_ref: torch.Tensor | None,
        e_ref: torch.Tensor | None,
        attention: Callable,
        cross: CrossInputs | None,
        cross_memory: CrossMemory | None = None,
    ):
        """Args:
            x: ``(B, F, N, D)`` video tokens or None (reference prefill).
            e: ``(B, F, 6, D)`` time modulation per frame.
            x_ref: ``(B, R, D)`` reference tokens or None (cached forward).
            e_ref: ``(B, 1, 6, D)`` modulation at the reference time.
            attention: ``(q, k, v) -> o``, all ``(B, H, N, d)``; the plan of this forward (mask, cache, RoPE).
            cross: cross-attention inputs (needed when ``x`` is given).
            cross_memory: ``self.cross_memory(cross)`` computed beforehand (a chunk's steps share it).
        Returns:
            ``(x, x_ref, (k, v))`` with this forward's un-rotated keys/values ``(B, H, R + F*N, d)``.
        """
        parts, mods = [], []
        if x_ref is not None:
            m = (e_ref + self.modulation).unbind(2)  # 6 x (B, 1, D)
            parts.append(modulate(self.norm1(x_ref), m[0], m[1]))
            mods.append(m)
        if x is not None:
            b, f, n, d = x.shape
            m_vid = (e + self.modulation)[:, :, None].unbind(3)  # 6 x (B, F, 1, D)
            parts.append(modulate(self.norm1(x), m_vid[0], m_vid[1]).reshape(b, f * n, d))  # (B, F*N, D)
        q, k, v = self.self_attn.qkv(torch.cat(parts, dim=1))
        o = self.self_attn.o(attention(q, k, v).transpose(1, 2).flatten(2))  # (B, R + F*N, D)
        r = 0 if x_ref is None else x_ref.shape[1]
        if x_ref is not None:
            m = mods[0]
            x_ref = x_ref + m[2] * o[:, :r]
            x_ref = x_ref + m[5] * self.mlp(modulate(self.norm3(x_ref), m[3], m[4]))
        if x is not None:
            x = x + m_vid[2] * o[:, r:].reshape(b, f, n, d)
            x = x + self.cross_attn(self.norm2(x), memory=cross_memory or self.cross_memory(cross))
            x = x + m_vid[5] * self.mlp(modulate(self.norm3(x), m_vid[3], m_vid[4]))
        return x, x_ref, (k, v)

    def keys_values(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the un-rotated keys/values ``(B, H, F*N, d)`` ``forward`` would return for video tokens ``x
        (B, F, N, D)`` under modulation ``e (B, F, 6, D)`` (no references): what a cache commit needs of the last
        block, without its attention, cross-attention and MLP."""
        b, f, n, d = x.shape
        m_vid = (e + self.modulation)[:, :, None].unbind(3)  # 6 x (B, F, 1, D)
        return self.self_attn.kv(modulate(self.norm1(x), m_vid[0], m_vid[1]).reshape(b, f * n, d))
