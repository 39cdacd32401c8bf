"""Shared fixtures of the Base-trainer tests: a 3-clip world-like data set at 64x64, a tiny random VAE and a
shrunken DiT config (all CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lpm.data.clip import write_clip
from lpm.models.vae import LpmVAE, VAEConfig
from lpm.world.motion import MOTION_NAMES

RES, FRAMES = 64, 12
# A shrunken DiT: latents 4 x 8 x 8, 2 blocks of width 32, small text / audio encoders, 2-frame chunks.
MICRO = [
    "model.dim=32", "model.num_heads=2", "model.num_blocks=2", "model.ffn_dim=64", "model.text_dim=16",
    "model.text_layers=1", "model.text_heads=2", "model.text_max_bytes=32", "model.audio_dim=16",
    "model.audio_layers=1", "model.mel.n_mels=8", "model.frames_per_chunk=2", "model.time_freq_dim=32",
    "model.partner_audio_before_frames=4", "model.reference_patch_size=4", "model.pose_dropout=0.0",
    "model.motion_dropout=0.0", "frames=4", "batch=4", "threads=1", "sample_every=0", "warmup_steps=0",
]


def make_dataset(root: Path, splits=("train", "train", "val")) -> Path:
    """Clips with a moving disc, a voice-like tone on one channel, world identities and motion."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[:RES, :RES]
    modes = ["speak", "listen", "conversation", "idle"]
    for i, split in enumerate(splits):
        bg, fg = rng.integers(0, 256, (2, 3))
        frames = np.empty((FRAMES, RES, RES, 3), np.uint8)
        for f in range(FRAMES):
            img = np.broadcast_to(bg, (RES, RES, 3)).copy()
            img[(yy - 32) ** 2 + (xx - 20 - 2 * f) ** 2 < 80] = fg
            frames[f] = img
        n = round(FRAMES * 16000 / 24)
        tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(n) / 16000)
        audio = np.stack([tone, np.zeros(n)]).astype(np.float32)
        meta = {"id": f"c{i}", "split": split, "style": "anime", "caption": f"clip number {i}",
                "states": ["speak"] * FRAMES, "events": [], "mode": modes[i % 4],
                "identity": {"seed": 100 + i, "style": "anime"}}
        motion = np.zeros((FRAMES, len(MOTION_NAMES)), np.float32)
        motion[:, MOTION_NAMES.index("jaw_open")] = np.linspace(0, 1, FRAMES)
        refs = {"global": frames[0], "body_front": frames[1], "expr_neutral": frames[2]}
        rows.append(write_clip(root / f"c{i}", frames, audio, refs, meta, motion, tuple(MOTION_NAMES)))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_vae(path: Path) -> Path:
    """A random tiny VAE (4 latent channels, 8x down) saved as a checkpoint."""
    import torch

    torch.manual_seed(0)
    LpmVAE(VAEConfig(latent_channels=4, channels=(8, 8, 8), norm_groups=4, encoder_mid_blocks=0)).save(path)
    return path
