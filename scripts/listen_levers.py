"""Listening levers at inference: how the Online model's reactions are placed and amplified, rated on train clips.

The Online model's listening (listen F1 0.232 on the listen suite, precision 0.26, recall 0.21; the rig 0.282,
precision 0.56) is the speech network's reaction events (``lpm.models.reactions``: an onset hazard fires a whole
template) drawn by the DiT, with the checkpoint's track gain on the head, brow and smile channels. This rates, on
**train** listening clips (the held-out clips the bench rates are not looked at), variants of that chain that need
no training, and reports F1, precision and recall per reaction kind:

- ``react=G``: the placed templates times G (on top of the track gain);
- ``reg=G``: the regressed track's head, brow and smile channels times G (the idle drift the gain also amplifies);
- ``level=L``: the fire level of the onset hazard (the checkpoint's calibrated one otherwise);
- ``shift=K``: every fired onset K frames later;
- ``head=G``, ``brow=G``, ``smile=G``: the track gain of those channels in place of the checkpoint's.

``online@PATH:...`` rates another checkpoint than ``--checkpoint``.

``rigtrack`` is the world's rig drawing the speech network's predicted track as it is (gain 1): what the events
would score if the DiT drew them exactly.

    lpm world synth --out data/listen_train --clips 60 --seconds 4 --res 128 --seed 505 --split train \\
        --mode listen --styles photo anime toon3d creature
    python scripts/listen_levers.py --data data/listen_train --systems 'rig;rigtrack;online;online:react=2'
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from wfid_floors import Predicted, RigSystem, emit  # scripts/

from lpm.data.clip import read_manifest
from lpm.eval import metrics as M
from lpm.eval.dit_systems import OnlineSystem
from lpm.eval.suites import clip_reactions, load_clip, load_instruments, run_clip_suite
from lpm.eval.systems import TraditionalSystem, TruthSystem
from lpm.models.reactions import REACTION_KINDS, place
from lpm.runtime.dit_engine import online_sampling_of

GAIN_KNOBS = {"head": ("head_yaw", "head_pitch", "head_roll"), "brow": ("brow_raise",), "smile": ("smile",)}
AMPLIFIED = tuple(c for channels in GAIN_KNOBS.values() for c in channels)  # the channels ``reg=`` scales
KNOBS = ("react", "reg", "level", "shift", *GAIN_KNOBS)


class LeverOnline(OnlineSystem):
    """An Online checkpoint whose speech network places its reactions as ``knobs`` say (see the module doc)."""

    def __init__(self, name: str, checkpoint: str, knobs: dict[str, float]) -> None:
        gains = {}
        if any(k in knobs for k in GAIN_KNOBS):
            sampling = online_sampling_of(checkpoint)
            gains = dict(sampling.track_gain) if sampling else {}
            for knob, channels in GAIN_KNOBS.items():
                if knob in knobs:
                    gains = {c: g for c, g in gains.items() if c not in channels}
                    gains.update(dict.fromkeys(channels, knobs[knob]))
        super().__init__(name, checkpoint, compute={"track_gain": gains} if gains else None)
        net = self.model.speech_motion
        names = self.model.cfg.motion_channels
        reg = torch.ones(len(names))
        reg[[names.index(c) for c in AMPLIFIED if c in names]] = knobs.get("reg", 1.0)
        react, shift = knobs.get("react", 1.0), int(knobs.get("shift", 0))
        if "level" in knobs:
            net.fire_level.fill_(knobs["level"])

        def with_reactions(track: torch.Tensor, onsets: torch.Tensor) -> torch.Tensor:
            if shift:
                onsets = F.pad(onsets.transpose(1, 2), (shift, 0))[..., :onsets.shape[1]].transpose(1, 2)
            return track * reg.to(track) + react * place(onsets, net.templates)

        net.with_reactions = with_reactions


def make_system(spec: str, checkpoint: str):
    """``rig``, ``rigtrack``, ``online`` or ``online:KNOB=V,...``."""
    if spec == "rig":
        return TraditionalSystem()
    if spec == "rigtrack":
        return RigSystem("rigtrack", Predicted(checkpoint))
    name, _, rest = spec.partition(":")
    name, _, path = name.partition("@")
    if name != "online":
        raise SystemExit(f"unknown system {spec!r}: rig, rigtrack, online or online:KNOB=V,... ({', '.join(KNOBS)})")
    knobs = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        if k not in KNOBS:
            raise SystemExit(f"unknown knob {k!r} in {spec!r}; knobs: {', '.join(KNOBS)}")
        knobs[k] = float(v)
    return LeverOnline(spec, path or checkpoint, knobs)


def per_kind(readings, truths, inst) -> dict[str, M.EventMatch]:
    """The bench's reaction match (``suites.clip_reactions``) per reaction kind, pooled over the clips."""
    out = {k: M.EventMatch(0, 0, 0, []) for k in REACTION_KINDS}
    for reading, truth in zip(readings, truths):
        true_ev, det = clip_reactions(reading.track.motion, truth, inst)
        for k in REACTION_KINDS:
            out[k] = out[k] + M.match_events([e for e in true_ev if e.type == k], [e for e in det if e.type == k])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/listen_train")
    ap.add_argument("--checkpoint", default="checkpoints/online_tiny.safetensors")
    ap.add_argument("--clips", type=int, default=0, help="the first N clips (0: all)")
    ap.add_argument("--systems", default="rig;rigtrack;online", help="';'-separated (see the module doc)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    inst = load_instruments()
    rows = list(read_manifest(args.data))
    rows = rows[:args.clips] if args.clips else rows
    loaded = []
    for r in rows:  # rated as the bench rates its seen clips
        inputs, truth = load_clip(args.data, r)
        loaded.append((dataclasses.replace(inputs, split="val"), truth))
    truths = [t for _, t in loaded]
    systems = [TruthSystem()] + [make_system(s, args.checkpoint) for s in args.systems.split(";")]
    t0 = time.time()
    results, _ = run_clip_suite(systems, rows, loaded, inst)
    kinds = " | ".join(f"{k} TP/FP/FN" for k in REACTION_KINDS)
    lines = [f"# Listening levers: `{args.checkpoint}`, {len(rows)} clips of `{args.data}` "
             f"({time.time() - t0:.0f} s)", "",
             "| system | listen F1 | precision | recall | delay p50 s | " + kinds + " |",
             "| --- |" + " --- |" * (4 + len(REACTION_KINDS))]
    for res in results:
        m = res.metrics["seen"]
        cells = ["–" if m.get(k) is None else f"{m[k]:.3f}"
                 for k in ("listen_f1", "listen_precision", "listen_recall", "reaction_delay_p50_s")]
        pk = per_kind(res.readings, truths, inst)
        cells += [f"{v.true_positives}/{v.false_positives}/{v.false_negatives}" for v in pk.values()]
        lines.append(f"| {res.name} | " + " | ".join(cells) + " |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
