"""``lpm model info`` (parameter counts per part, built on the meta device) and ``lpm model time`` (CPU
time of one Online chunk of the generator with a full KV cache)."""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch

from lpm.models.dit import DiT
from lpm.models.dit_config import PRESETS, DiTConfig, preset
from lpm.models.timing import time_online_chunk

# Parts of the parameter table, matched in order by name prefix / fragment.
_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("blocks: self-attention", (".self_attn.",)),
    ("blocks: audio cross-attention (K/V, offsets)", (".cross_attn.audio_",)),
    ("blocks: text cross-attention (Q, O, text K/V, norms)", (".cross_attn.", ".norm2.")),
    ("blocks: MLP", (".mlp.",)),
    ("blocks: adaLN offsets", (".modulation",)),
    ("adaLN: shared time projection", ("time_proj.",)),
    (
        "embedders: patch, time, pose, text projection",
        ("patch_embed.", "time_embed.", "pose_embed.", "text_proj."),
    ),
    ("reference embedding", ("reference_embed.",)),
    ("text encoder (byte-level)", ("text_encoder.",)),
    ("audio encoder", ("audio_encoder.",)),
    ("motion track: speech -> motion network, track embeddings", ("speech_motion.", "motion_embed.", "motion_map")),
    ("head", ("head.",)),
)


def parameter_counts(model: DiT) -> OrderedDict[str, int]:
    """Parameters per part (see ``_PARTS``) and ``total``; every parameter is counted exactly once."""
    counts: OrderedDict[str, int] = OrderedDict((name, 0) for name, _ in _PARTS)
    for name, param in model.named_parameters():
        for part, keys in _PARTS:
            in_block = part.startswith("blocks")
            if in_block == name.startswith("blocks.") and any(k in name for k in keys):
                counts[part] += param.numel()
                break
        else:
            raise RuntimeError(f"parameter {name} belongs to no part of the table")
    counts["total"] = sum(counts.values())
    return counts


def build_meta(cfg: DiTConfig) -> DiT:
    """The model on the meta device: shapes and counts without memory."""
    with torch.device("meta"):
        return DiT(cfg)


def _info(args: argparse.Namespace) -> int:
    cfg = preset(args.preset)
    counts = parameter_counts(build_meta(cfg))
    width = max(len(k) for k in counts)
    print(
        f"preset {args.preset}: dim {cfg.dim}, {cfg.num_blocks} blocks, {cfg.num_heads} heads, "
        f"ffn {cfg.ffn_dim}, "
        f"latent {cfg.latent_channels}x{cfg.latent_height}x{cfg.latent_width}, "
        f"{cfg.tokens_per_frame} tokens/frame"
    )
    for name, n in counts.items():
        print(f"  {name:<{width}}  {n:>15,d}  {n / 1e6:>10.2f} M")
    return 0


def _time(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    seconds = time_online_chunk(cfg, args.iters, args.warmup, bf16=not args.fp32)
    fc = cfg.frames_per_chunk
    print(
        f"preset {args.preset}: one Online chunk ({fc} frames, {cfg.tokens_per_chunk} tokens, full cache, "
        f"{'fp32' if args.fp32 else 'bf16 autocast'}, {torch.get_num_threads()} threads): "
        f"{seconds * 1e3:.1f} ms per generator forward = {fc / seconds:.1f} frames/s per denoising step"
    )
    return 0


def register(sub, groups: dict) -> None:
    """Add ``info`` and ``time`` under ``lpm model``."""
    info = groups["model"].add_parser("info", help="parameter counts per part of a DiT preset (meta device)")
    info.add_argument("--preset", choices=list(PRESETS), default="tiny")
    info.set_defaults(func=_info)
    timer = groups["model"].add_parser("time", help="CPU time of one Online chunk with a full KV cache")
    timer.add_argument("--preset", choices=list(PRESETS), default="tiny")
    timer.add_argument("--iters", type=int, default=20)
    timer.add_argument("--warmup", type=int, default=5)
    timer.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    timer.add_argument("--fp32", action="store_true", help="time in float32 instead of bf16 autocast")
    timer.set_defaults(func=_time)
