"""Track gain: does the Online DiT draw more of what its track carries when the track is amplified?

The DiT given the *true* track draws the mouth at r 0.6-0.8 but the head, brows, smile and emotions at r 0.15-0.4
(docs/learning.md, arm 20): it under-expresses the track. This streams an Online checkpoint as the bench does with
chosen channels of its predicted track multiplied by a gain and reads every run with the bench's instruments.
Meant for tuning on *training* clips (``--split train``: the held-out clips the bench rates are not looked at).

    python scripts/track_gain.py --split train --clips 12 --systems 'emotion=1;emotion=4;emotion=4+head=2'
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from wfid_floors import channel_agreement, emit  # scripts/: the per-channel r of the probe's readings

from lpm.data.clip import read_manifest
from lpm.eval.dit_systems import OnlineSystem
from lpm.eval.suites import load_clip, load_instruments, run_clip_suite
from lpm.eval.systems import TruthSystem

GROUPS = {
    "expression": ("brow_raise", "smile", "emo_happy", "emo_sad", "emo_surprised", "emo_angry"),
    "emotion": ("emo_happy", "emo_sad", "emo_surprised", "emo_angry"),
    "brow_smile": ("brow_raise", "smile"),
    "head": ("head_yaw", "head_pitch", "head_roll"),
    "face": ("brow_raise", "smile", "emo_happy", "emo_sad", "emo_surprised", "emo_angry",
             "head_yaw", "head_pitch", "head_roll"),
}
SHOWN = ("head_yaw", "head_pitch", "head_roll", "brow_raise", "smile", "jaw_open")


class GainOnline(OnlineSystem):
    """An Online checkpoint whose predicted track has each group's channels multiplied by its gain."""

    def __init__(self, name: str, checkpoint: str, gains: dict[str, float]) -> None:
        super().__init__(name, checkpoint)
        names = self.model.cfg.motion_channels
        scale = torch.ones(len(names))
        for group, gain in gains.items():
            scale[[names.index(c) for c in GROUPS.get(group, (group,)) if c in names]] = gain
        predict = self.model.predict_motion

        def amplified(cond, first: int, num: int) -> torch.Tensor:
            track = predict(cond, first, num)  # (B, F, P)
            return track * scale.to(track)

        self.model.predict_motion = amplified


def pick_rows(data: str, split: str, count: int) -> list[dict]:
    """``count`` rows of ``split`` spread evenly over the manifest (modes and styles mixed)."""
    rows = [r for r in read_manifest(data) if r["split"] == split]
    idx = np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int)
    return [rows[i] for i in sorted(set(idx.tolist()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/world128")
    ap.add_argument("--checkpoint", default="checkpoints/online_tiny.safetensors")
    ap.add_argument("--split", default="train")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--systems", default="expression=1;expression=2;expression=3",
                    help="';'-separated systems, each '+'-separated GROUP=GAIN (a channel name or a group: "
                         + ", ".join(GROUPS) + ")")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    inst = load_instruments("checkpoints/probe.safetensors", "checkpoints/identity.safetensors",
                            "checkpoints/states.safetensors")
    rows = pick_rows(args.data, args.split, args.clips)
    loaded = []
    for r in rows:  # rated as the bench rates its seen clips
        inputs, truth = load_clip(args.data, r)
        loaded.append((dataclasses.replace(inputs, split="val"), truth))
    specs = [dict((k, float(v)) for k, v in (p.split("=") for p in s.split("+"))) for s in args.systems.split(";")]
    systems = [TruthSystem()] + [GainOnline(" + ".join(f"{k} x{v:g}" for k, v in g.items()), args.checkpoint, g)
                                 for g in specs]
    t0 = time.time()
    results, _ = run_clip_suite(systems, rows, loaded, inst)
    keys = ("lipsync_r", "silent_mouth_closed", "listen_f1", "state_acc", "text_emotion_acc", "identity_sim",
            "world_fid")
    lines = ["# Track gain: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in GROUPS.items()), "",
             f"`{args.checkpoint}`, {len(rows)} {args.split} clips rated as the bench's seen split "
             f"({time.time() - t0:.0f} s). Channel r: the probe's reading against its reading of the truth render.",
             "", "| system | " + " | ".join(keys) + " | " + " | ".join(f"r {c}" for c in SHOWN) + " |",
             "| --- |" + " --- |" * (len(keys) + len(SHOWN))]
    for res in results:
        m = res.metrics["seen"]
        cells = ["–" if m.get(k) is None else f"{m[k]:.3f}" for k in keys]
        rs = channel_agreement(results[0], res) if res.name != "truth" else {c: 1.0 for c in SHOWN}
        cells += [f"{rs.get(c, float('nan')):.2f}" for c in SHOWN]
        lines.append(f"| {res.name} | " + " | ".join(cells) + " |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
