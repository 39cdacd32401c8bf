"""Frame sets: many identities in random poses, rendered straight to arrays (no speech, no video files).

The VAE only needs images that cover what the DiT will ask it to decode, so a frame set renders random rig poses
(mouth, eyes, head, body turns, emotions) of many identities, plus their reference images, and stores them as
``DIR/<split>.npz`` with uint8 arrays ``frames`` (N, H, W, 3) and ``refs`` (M, H, W, 3). It needs only numpy and
Pillow, so it also runs on machines without espeak-ng or PyAV (a GPU box, say).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lpm.world.identity import TRAIN_STYLES, ZEROSHOT_STYLE, sample_identity
from lpm.world.motion import BODY_VIEWS, MOTION_NAMES, MOTION_RANGE, NUM_MOTION
from lpm.world.render import Renderer
from lpm.world.synth import IDENTITY_SEED_BASE, SPLIT_CODE, render_references

# Share of poses facing front (the data's common case); the rest turn the body anywhere.
FRONT_SHARE = 0.7
# Share of poses with the mouth fully at rest (closed) and eyes open, as in listening / idle frames.
REST_SHARE = 0.25


def random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random rig poses covering every channel's range.

    Returns:
        (n, NUM_MOTION) float32.
    """
    lo = np.array([MOTION_RANGE[k][0] for k in MOTION_NAMES], np.float32)
    hi = np.array([MOTION_RANGE[k][1] for k in MOTION_NAMES], np.float32)
    poses = rng.uniform(lo, hi, size=(n, NUM_MOTION)).astype(np.float32)
    idx = {k: i for i, k in enumerate(MOTION_NAMES)}
    # Head angles mostly small, as in performances; blinks mostly open or closed.
    for k, scale in (("head_yaw", 0.5), ("head_pitch", 0.5), ("head_roll", 0.5)):
        poses[:, idx[k]] *= scale
    for k in ("blink_l", "blink_r"):
        poses[:, idx[k]] = np.where(rng.random(n) < 0.6, 0.0, poses[:, idx[k]])
    front = rng.random(n) < FRONT_SHARE
    poses[front, idx["body_yaw"]] = rng.normal(0, 8, front.sum())
    # One emotion at a time, as in the clips.
    emo = [idx[f"emo_{e}"] for e in ("happy", "sad", "surprised", "angry")]
    which = rng.integers(-1, 4, n)
    poses[:, emo] = 0.0
    for j, col in enumerate(emo):
        poses[which == j, col] = rng.uniform(0.3, 1.0, (which == j).sum())
    rest = rng.random(n) < REST_SHARE
    for k in ("jaw_open", "mouth_round", "mouth_wide", "blink_l", "blink_r"):
        poses[rest, idx[k]] = 0.0
    return poses


def _identity_frames(args: tuple[str, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    split, seed, i, per_identity, res = args
    rng = np.random.default_rng([seed, i, SPLIT_CODE[split], 99])
    styles = (ZEROSHOT_STYLE,) if split == "zeroshot" else TRAIN_STYLES
    style = styles[i % len(styles)]
    identity = sample_identity(IDENTITY_SEED_BASE[split] + int(rng.integers(0, 9_999_999)), style)
    renderer = Renderer(identity, res)
    frames = renderer.render_sequence(random_poses(rng, per_identity))
    refs = render_references(renderer)
    keep = ["global"] + [f"body_{v}" for v in BODY_VIEWS]
    return frames, np.stack([refs[k] for k in keep])


def render_frame_set(split: str, identities: int, per_identity: int, res: int, seed: int = 0,
                     workers: int | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render ``identities`` x ``per_identity`` random-pose frames (and 5 references each) of one split."""
    jobs = [(split, seed, i, per_identity, res) for i in range(identities)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=identities, desc=f"render {split}", unit="id", disable=not progress)
    out = []
    if workers <= 1:
        for j in jobs:
            out.append(_identity_frames(j))
            bar.update()
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_identity_frames, jobs, chunksize=4):
                out.append(r)
                bar.update()
    bar.close()
    return np.concatenate([f for f, _ in out]), np.concatenate([r for _, r in out])


def write_frame_sets(out: str | Path, identities: dict[str, int], per_identity: int, res: int, seed: int = 0,
                     workers: int | None = None) -> dict[str, int]:
    """Write ``out/<split>.npz`` for each split; returns frames per split."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in identities.items():
        if n <= 0:
            continue
        frames, refs = render_frame_set(split, n, per_identity, res, seed, workers)
        tmp = root / f".{split}.tmp.npz"
        np.savez(tmp, frames=frames, refs=refs)
        os.replace(tmp, root / f"{split}.npz")
        counts[split] = int(frames.shape[0])
    return counts
