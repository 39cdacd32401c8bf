"""Does a DiT's speech network put the caption's emotion into the motion track? (docs/learning.md, stop 26)

    python scripts/track_emotion.py --checkpoint checkpoints/online_tiny.safetensors --data data/world128 --split val

Per clip: the argmax of the mean predicted ``emo_*`` channels (neutral when all stay below 0.15) against the same
reading of the clip's true motion; prints the agreement and the confusion counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lpm.audio.mel import LogMel
from lpm.data.clip import read_clip, read_manifest
from lpm.models.dit import load_dit
from lpm.training.latent_cache import PARTNER_CHANNEL, SELF_CHANNEL, frame_mel

NEUTRAL_BELOW = 0.15


def dominant(values: torch.Tensor, names: list[str]) -> str:
    return "neutral" if float(values.max()) < NEUTRAL_BELOW else names[int(values.argmax())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/online_tiny.safetensors")
    p.add_argument("--data", default="data/world128")
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=40)
    args = p.parse_args(argv)
    model = load_dit(args.checkpoint).eval()
    channels = list(model.cfg.motion_channels)
    emotions = [c for c in channels if c.startswith("emo_")]
    if not emotions:
        raise SystemExit(f"{args.checkpoint}: its motion track has no emotion channels")
    log_mel = LogMel(model.cfg.mel)
    confusion: dict[tuple[str, str], int] = {}
    for row in read_manifest(args.data, args.split)[:args.clips]:
        clip = read_clip(Path(args.data) / row["path"])
        if clip.motion is None:
            continue
        mel = frame_mel(log_mel, clip.audio[[SELF_CHANNEL, PARTNER_CHANNEL]].float(), clip.video.shape[0])
        with torch.no_grad():
            track = model.speech_motion(mel[0:1], mel[1:2], [clip.meta.caption])[0]  # (F, P)
        pred = track[:, [channels.index(e) for e in emotions]].mean(0)
        true = clip.motion[:, [clip.motion_names.index(e) for e in emotions]].float().mean(0)
        key = (dominant(true, emotions), dominant(pred, emotions))
        confusion[key] = confusion.get(key, 0) + 1
    total = sum(confusion.values())
    agree = sum(n for (t, q), n in confusion.items() if t == q)
    print(f"{args.checkpoint} on {args.split}: the track's emotion equals the truth on {agree} of {total} clips")
    for (t, q), n in sorted(confusion.items()):
        print(f"  true {t:14s} track {q:14s} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
