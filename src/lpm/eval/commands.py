"""``lpm bench`` and ``lpm eval train-probe|train-face|train-head|train-identity|train-states`` (parsing only)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lpm.errors import LpmError
from lpm.eval import (
    DEFAULT_DATA,
    DEFAULT_FACE,
    DEFAULT_HEAD,
    DEFAULT_IDENTITY,
    DEFAULT_PROBE,
    DEFAULT_STATES,
    LISTEN_DATA,
)

# --minutes when not given: the long suite's 45-minute session; the full suite runs a shorter one.
DEFAULT_MINUTES = {"long": 45.0, "full": 10.0, "quick": 0.0, "listen": 0.0}


def _parse_checkpoints(items: list[str], defaults: bool = True) -> dict[str, str]:
    """``base=PATH`` / ``online=PATH`` / ``online+refiner=PATH``; a bare PATH is named by its checkpoint: a DiT by
    its attention mode (block-causal = online), others by the stored ``stage`` or kind. Names not given take the
    shipped ``DEFAULT_CHECKPOINTS`` that exist (unless ``defaults`` is False)."""
    from lpm.eval.systems import DEFAULT_CHECKPOINTS, MODEL_SYSTEMS

    out = {}
    for item in items:
        if "=" in item:
            name, path = item.split("=", 1)
        else:
            from lpm.training.checkpoint import read_metadata

            meta = read_metadata(item)
            if meta["kind"] == "dit":
                name = "online" if meta["config"].get("attention") == "block_causal" else "base"
            else:
                name = "online" if "online" in (meta["extra"].get("stage", "") + meta["kind"]) else "base"
            path = item
        if name in ("truth", "traditional", "static") or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise LpmError(f"--checkpoint {item!r}: name a model system {', '.join(MODEL_SYSTEMS)} or any other "
                           "name of letters, digits, _ . + - (not truth / traditional / static)")
        out[name] = path
    if defaults:
        for name, path in DEFAULT_CHECKPOINTS.items():
            if name not in out and Path(path).is_file():
                out[name] = path
    return out


def _speed(args: argparse.Namespace) -> int:
    import torch

    from lpm.eval.speed import DEFAULT_PRESETS, run_speed
    from lpm.models.dit_config import preset

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.devices:
        return _speed_scale(args, device)
    names = args.preset or DEFAULT_PRESETS.get(device, ())
    budget = None if args.memory_gib is None else int(args.memory_gib * 2**30)
    report = run_speed(args.out, {name: preset(name) for name in names}, res=args.res, device=device,
                       repeats=args.repeats, memory_budget=budget, threads=args.threads,
                       engine_checkpoint=None if args.engine == "none" else args.engine,
                       engine_chunks=args.engine_chunks, engine_seconds=args.engine_seconds)
    print(f"wrote {args.out}/report.json, report.md in {report['wall_s']:.0f} s")
    return 0


def _speed_scale(args: argparse.Namespace, device: str) -> int:
    """``--devices``: measured sequence-parallel figures under torchrun, and the projection (lpm.eval.speed_scale)."""
    import torch

    from lpm.eval.speed import at_resolution, parse_resolution
    from lpm.eval.speed_scale import run_scale, stated_link
    from lpm.models.dit_config import preset
    from lpm.parallel.group import init_sequence_group

    if not args.preset or len(args.preset) != 1:
        raise LpmError("--devices takes exactly one --preset (e.g. --preset lpm-17b --devices 1 2 4 8)")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.preset[0]
    cfg, _ = at_resolution(preset(name), parse_resolution(args.res) if args.res else None)
    group = init_sequence_group(device)
    dev = torch.device(f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu")
    stated = {k: v for k, v in (("gbps", args.link_gbps), ("latency_us", args.link_latency_us)) if v is not None}
    report = run_scale(args.out, name, cfg, args.devices, args.t_down, group, dev, args.repeats, args.measured,
                       stated_link(**stated))
    if report is not None:
        print(f"wrote {args.out}/report.json, report.md")
    return 0


def _parse_model_clips(items: list[str] | None) -> dict[str, int]:
    """``["12", "base=4"]`` -> ``{"*": 12, "base": 4}``: clips a trained model rates in the quick suite."""
    out = {}
    for item in items or []:
        name, _, count = item.rpartition("=")
        try:
            out[name or "*"] = int(count)
        except ValueError:
            raise LpmError(f"--model-clips {item!r}: expected N or NAME=N") from None
        if out[name or "*"] < 1:
            raise LpmError(f"--model-clips {item!r}: the count must be >= 1")
    return out


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "speed":
        return _speed(args)
    from lpm.eval.bench import run_bench

    minutes = args.minutes if args.minutes is not None else DEFAULT_MINUTES[args.suite]
    report = run_bench(args.suite, args.out, data=args.data, probe=args.probe, identity=args.identity,
                       states=args.states, face=args.face, head=args.head,
                       checkpoints=_parse_checkpoints(args.checkpoint, not args.no_default_checkpoints),
                       minutes=minutes, seed=args.seed, refiner=args.refiner, base_steps=args.base_steps,
                       model_clips=_parse_model_clips(args.model_clips), baseline=args.baseline)
    print(f"wrote {args.out}/report.json, report.md, {', '.join(report['plots'])} in {report['wall_s']:.0f} s")
    return 0


def _train(kind: str):
    def run(args: argparse.Namespace) -> int:
        from lpm.config import apply_overrides
        from lpm.eval.train import InstrumentTrainConfig, train_instrument

        cfg = apply_overrides(InstrumentTrainConfig(), args.overrides)
        print(json.dumps(train_instrument(kind, args.out, cfg, data=args.data), indent=1))
        return 0

    return run


def _fit_emotion(args: argparse.Namespace) -> int:
    from lpm.eval.emotion_fit import fit_face_emotion
    from lpm.eval.suites import face_path_or_none

    path = face_path_or_none(args.face)
    if path is None:
        raise LpmError("fit-emotion needs a face reader (--face PATH)")
    fit_face_emotion(path, args.data)
    return 0


def _train_states(args: argparse.Namespace) -> int:
    from lpm.config import apply_overrides
    from lpm.eval.state_train import StateTrainConfig, train_states

    cfg = apply_overrides(StateTrainConfig(), args.overrides)
    extra = train_states(args.out, cfg, args.probe, args.face, args.head)
    print(json.dumps({k: extra[k] for k in ("accuracy", "reaction_fit")}, indent=1))
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``lpm bench`` and ``lpm eval train-probe|train-identity``."""
    from lpm.eval.speed import DEFAULT_REPEATS
    from lpm.eval.suites import SUITES
    from lpm.eval.train import FACE_KIND, HEAD_KIND, IDENTITY_KIND, PROBE_KIND
    from lpm.models.dit_config import PRESETS

    p = sub.add_parser("bench", help="LPM-Bench: every system, every metric, with validated instruments",
                       description="Run the bench suite and write OUT/report.json, OUT/report.md and PNG plots.")
    p.add_argument("--suite", choices=(*SUITES, "speed"), default="quick",
                   help="quick (minutes on a CPU) | full (all eval clips + a long session) | long (45 min session) "
                        "| listen (80 listening clips of its own case set: listen F1 on ~50 reactions) "
                        "| speed (ms per chunk, fps and memory of DiT presets with random weights)")
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="[NAME=]PATH",
                   help="trained model checkpoints to compare: base=PATH, online=PATH, or NAME=PATH for any other "
                        "system; a bare PATH is named by its attention mode; default: "
                        "checkpoints/base_tiny.safetensors, checkpoints/online_tiny.safetensors")
    p.add_argument("--no-default-checkpoints", action="store_true",
                   help="do not pick up the shipped base/online checkpoints for names not given")
    p.add_argument("--refiner", action="store_true",
                   help="also run online+refiner: the online checkpoint with the one-step refiner on")
    p.add_argument("--base-steps", type=int, default=None,
                   help="ODE steps per window of the base system (default 8, in the quick suite 4; fewer trade "
                        "quality for CPU time)")
    p.add_argument("--model-clips", nargs="*", metavar="N|NAME=N",
                   help="clips each trained model rates in the quick suite (default base=4, others 12; more clips "
                        "narrow the intervals and cost CPU time; listen suite: base=4, others 80), e.g. "
                        "--model-clips 12 base=4")
    p.add_argument("--baseline", default=None, nargs="+", metavar="NAME",
                   help="the system every other is compared with clip for clip: the report's paired differences "
                        "with their paired bootstrap intervals (default: online, when it runs); several names: "
                        "one table each (e.g. --baseline online base to judge Base variants too)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--data", default=None,
                   help=f"world clip data set (default: the suite's own case set, built on first use: {DEFAULT_DATA}; "
                        f"for --suite listen {LISTEN_DATA})")
    p.add_argument("--probe", default=DEFAULT_PROBE)
    p.add_argument("--face", default=DEFAULT_FACE, help="face reader whose eye, brow and mouth channels and "
                   "emotion replace the probe's (none: the probe alone)")
    p.add_argument("--head", default=DEFAULT_HEAD, help="head pose reader whose pitch, roll and yaw replace the "
                   "probe's (none: the probe's)")
    p.add_argument("--identity", default=DEFAULT_IDENTITY)
    p.add_argument("--states", default=DEFAULT_STATES, help="state reader (speak / listen / idle from the tracks)")
    p.add_argument("--minutes", type=float, default=None,
                   help="long-session length (default 45 for --suite long, 10 for full, none for quick)")
    p.add_argument("--seed", type=int, default=0)
    speed = p.add_argument_group("speed suite")
    speed.add_argument("--preset", nargs="+", choices=list(PRESETS), default=None,
                       help="DiT presets to time (default: tiny small on CPU, every preset on CUDA)")
    speed.add_argument("--res", default=None, metavar="128|256|480p|720p",
                       help="video resolution: 480p = 480x832, 720p = 720x1280, N = NxN px (default: each preset's)")
    speed.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    speed.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                       help="timed chunks per stage after one warm-up (the median is reported)")
    speed.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    speed.add_argument("--engine", default="checkpoints/online_tiny.safetensors", metavar="CHECKPOINT|none",
                       help="on a CPU, also time this Online checkpoint through the runtime engine, lever by lever, "
                            "and a realtime session (default: the shipped model)")
    speed.add_argument("--engine-chunks", type=int, default=8, help="measured chunks per lever")
    speed.add_argument("--engine-seconds", type=float, default=30.0,
                       help="length of the realtime session (600 for the 10-minute flatness check; 0: none)")
    speed.add_argument("--memory-gib", type=float, default=None,
                       help="memory a preset may need (default: what the device has free); bigger ones are skipped")
    speed.add_argument("--devices", type=int, nargs="+", default=None, metavar="N",
                       help="sequence-parallel figures for N devices: measured over the processes of a torchrun job, "
                            "a labelled projection for the other counts (docs/scale.md)")
    speed.add_argument("--t-down", type=int, default=1,
                       help="with --devices: video frames per latent frame (DiTConfig.t_down; 4 as Wan's VAE)")
    speed.add_argument("--measured", default=None, metavar="REPORT",
                       help="with --devices: single-device stage times from this speed report.json instead of "
                            "measuring here (e.g. docs/bench/speed_h100/report.json)")
    speed.add_argument("--link-gbps", type=float, default=None,
                       help="with --devices, no torchrun: the all-to-all bandwidth per rank the projection assumes "
                            "(default 150)")
    speed.add_argument("--link-latency-us", type=float, default=None,
                       help="with --devices, no torchrun: the latency per collective the projection assumes "
                            "(default 30)")
    p.set_defaults(func=_bench)

    for name, kind, what in (("train-probe", PROBE_KIND, "the motion probe"),
                             ("train-face", FACE_KIND, "the face reader (eyes, brows, mouth, emotion)"),
                             ("train-head", HEAD_KIND, "the head pose reader (pitch, roll, yaw)"),
                             ("train-identity", IDENTITY_KIND, "the identity embedding")):
        p = groups["eval"].add_parser(name, help=f"train {what} on world renders (rerun to resume)")
        p.add_argument("--out", required=True, help="run directory; render sets are cached in OUT/../renders")
        p.add_argument("--data", default=DEFAULT_DATA, help="clip data set whose train motion seeds half the poses")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="InstrumentTrainConfig overrides, e.g. steps=1600 lr=2e-3")
        p.set_defaults(func=_train(kind))

    p = groups["eval"].add_parser("fit-emotion", help="calibrate the bench's clip emotion decision (the neutral "
                                  "weight) on the truth render of the data set's train clips; stored in the face "
                                  "reader's checkpoint")
    p.add_argument("--face", default=DEFAULT_FACE, help="face reader checkpoint (rewritten with the weights)")
    p.add_argument("--data", default=DEFAULT_DATA, help="clip data set whose train clips calibrate")
    p.set_defaults(func=_fit_emotion)

    p = groups["eval"].add_parser("train-states", help="train the state reader on world performances with the "
                                  "probes' measured errors")
    p.add_argument("--out", required=True, help="run directory (calibration clips and performances cached there)")
    p.add_argument("--probe", default=DEFAULT_PROBE)
    p.add_argument("--face", default=DEFAULT_FACE, help="face reader whose eye, brow and mouth channels and "
                   "emotion replace the probe's (none: the probe alone)")
    p.add_argument("--head", default=DEFAULT_HEAD, help="head pose reader whose pitch, roll and yaw replace the "
                   "probe's (none: the probe's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="StateTrainConfig overrides, e.g. clips=1200")
    p.set_defaults(func=_train_states)
