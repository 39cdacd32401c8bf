"""A motion expert's Pearson r per channel on another data set's encoded frames (e.g. the DMD data it checks).

    python scripts/expert_check.py runs/expert_ids/expert.safetensors --data data/world128 --cache runs/cache
"""

from __future__ import annotations

import argparse

import torch

from lpm.models.dit import load_dit
from lpm.models.latent_codec import load_codec
from lpm.training.latent_cache import load_latent_cache
from lpm.training.motion_expert import column_r, frames_of, load_expert, read_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("expert")
    ap.add_argument("--data", default="data/world128")
    ap.add_argument("--vae", default="checkpoints/vae_tiny.safetensors")
    ap.add_argument("--dit", default="checkpoints/online_tiny.safetensors", help="gives the mel features (cache key)")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    ap.add_argument("--frames", type=int, default=6000, help="at most this many frames per split (random)")
    args = ap.parse_args()
    reader = load_expert(args.expert)
    mel = load_dit(args.dit).cfg.mel
    codec = load_codec(args.vae)
    print("| split | frames | " + " | ".join(reader.cfg.channels) + " |")
    print("| --- | --- |" + " --- |" * len(reader.cfg.channels))
    for split in args.splits:
        clips = load_latent_cache(args.data, split, codec=codec, vae_spec=args.vae, mel=mel, cache_dir=args.cache,
                                  show_progress=False)
        frames = frames_of(clips, reader.cfg.channels, reader.cfg.reference_kind)
        if len(frames) > args.frames:
            frames = frames.take(torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:args.frames])
        rs = column_r(read_all(reader, frames), frames.track)
        print(f"| {split} | {len(frames)} | " + " | ".join(f"{r:.2f}" for r in rs) + " |")


if __name__ == "__main__":
    main()
