"""Calibrate (or recalibrate) the reaction firing level of a speech network on a data set's train clips, report
its reactions on the val clips, and write the calibrated checkpoint.

    python scripts/calibrate_reactions.py runs/speech/speech.safetensors --data data/world128 --out SPEECH.safetensors

``lpm train speech`` calibrates at every checkpoint; this is for a checkpoint written before the level existed, or
for another data set. The level is the one whose fired onsets best match the true ones (onset F1), see
``lpm.training.speech_trainer.calibrate_fire_level``.
"""

from __future__ import annotations

import argparse
import json

import torch

from lpm.models.dit_config import preset
from lpm.models.motion_track import load_speech, save_speech, speech_network
from lpm.training.speech_trainer import CALIBRATION_CLIPS, calibrate_fire_level, evaluate, load_speech_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("speech")
    p.add_argument("--data", default="data/world128")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="tiny")
    args = p.parse_args()
    torch.set_num_threads(1)
    dit = preset(args.preset)
    state, extra = load_speech(args.speech, dit)
    net = speech_network(dit)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"fire_level"}:
        raise SystemExit(f"{args.speech} does not fit the {args.preset} speech network: missing {missing}, "
                         f"unexpected {unexpected}")
    f1 = calibrate_fire_level(net, load_speech_clips(args.data, "train", dit)[:CALIBRATION_CLIPS])
    val = evaluate(net, load_speech_clips(args.data, "val", dit))
    extra = {**extra, "fire_level": float(net.fire_level), "calibrated_on": args.data}
    save_speech(args.out, net, dit, extra)
    print(json.dumps({"fire_level": round(float(net.fire_level), 3), "calibration_onset_f1": f1,
                      "val_reactions": val.get("reactions"), "val_r": val["r"]}, indent=1))


if __name__ == "__main__":
    main()
