"""Training of the state reader (``states.py``): ``lpm eval train-states``.

1. Calibration: ``calib_clips`` world clips of held-out (``val``-range) identities, seen styles, a seed the bench
   data never uses, rendered and read by the motion probe; ``ReadingNoise`` is fitted on their
   readings against their true motion.
2. Performances: ``clips`` world performances (true motion and states, drawn in memory, no rendering).
3. The reader is trained on the performances with the fitted probe errors added afresh every step, then
   scored on the calibration clips' real probe tracks (``accuracy`` in the checkpoint's metadata).
4. The reaction detector's rules are fitted to the reading (``reaction_fit``) on ``reaction_clips`` rendered
   listening clips of held-out identities (seed + 202), and stored in the same metadata (``reaction_rules``).
Everything is cached under the run directory, so a rerun only repeats what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpm.data.clip import STATE_NAMES, read_manifest
from lpm.eval.reaction_fit import CalibrationClips, fit_reaction_rules, rules_to_json
from lpm.eval.states import STATE_KIND, ReadingNoise, StateNet, StateReader, StateReaderConfig, scale_tracks
from lpm.fsutil import file_digest
from lpm.training.checkpoint import load_checkpoint, load_into, save_checkpoint


@dataclass(frozen=True)
class StateTrainConfig:
    """Data and schedule of the state reader."""

    clips: int = 1200  # world performances to train on
    calib_clips: int = 96  # rendered clips of held-out identities the probe errors are measured on
    seconds: float = 4.0
    seed: int = 101  # of the performances; the calibration clips use seed + 101 (the bench data uses 0)
    reaction_clips: int = 192  # rendered listening clips the reaction rules are fitted on (seed + 202)
    steps: int = 600
    batch: int = 64  # clips per step
    lr: float = 3e-3
    weight_decay: float = 1e-3
    threads: int = 1


def world_performances(count: int, seed: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """True motion and states of ``count`` train-split world performances (``make_clip``: no rendering).

    Returns:
        motion (N, F, NUM_MOTION) float32 in MOTION_NAMES order; states (N, F) int64.
    """
    from lpm.world.synth import make_clip, plan

    motions, states = [], []
    for spec in plan(count, seed, seconds, 128, split="train"):
        clip = make_clip(spec)
        motions.append(clip.performance.motion.astype(np.float32))
        states.append(np.array([STATE_NAMES.index(s) for s in clip.performance.states], np.int64))
    return np.stack(motions), np.stack(states)


def _cached(path: Path, make) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = make()
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def calibration_readings(run: Path, cfg: StateTrainConfig, read, tag: str = "", name: str = "calib",
                         clips: int | None = None, seed: int | None = None,
                         mode: str | None = None) -> dict[str, np.ndarray]:
    """Render calibration clips under ``RUN/name`` (cached) and read them with ``read`` ((F, H, W, 3) ->
    (F, NUM_MOTION)). By default the state reader's set (``calib_clips``, seed + 101, every mode).

    The readings are cached per ``tag`` (one per reader, ``reader_tag``).

    Returns:
        {"read", "true": (N, F, NUM_MOTION), "states": (N, F), "events": (E, 3) int64 rows of (clip, reaction type
        index into ``metrics.REACTION_TYPES``, onset frame)}.
    """
    from lpm.data.video import read_mp4
    from lpm.eval.metrics import REACTION_TYPES
    from lpm.eval.suites import load_motion_states
    from lpm.world.synth import plan, synth

    root = run / name
    clips = cfg.calib_clips if clips is None else clips
    seed = cfg.seed + 101 if seed is None else seed
    synth(root, plan(clips, seed, cfg.seconds, 128, split="val", mode=mode), workers=1, progress=False)

    def make() -> dict[str, np.ndarray]:
        read_, true, states, events = [], [], [], []
        for i, row in enumerate(read_manifest(root)):
            motion, st, reactions = load_motion_states(root / row["path"])
            read_.append(read(read_mp4(root / row["path"] / "video.mp4")))
            true.append(motion)
            states.append(st)
            events += [(i, REACTION_TYPES.index(e.type), e.frame) for e in reactions]
        return {"read": np.stack(read_), "true": np.stack(true), "states": np.stack(states),
                "events": np.array(events, np.int64).reshape(-1, 3)}

    return _cached(run / f"{name}_readings{tag}.npz", make)


def calibration_clips(readings: dict[str, np.ndarray]) -> CalibrationClips:
    """``calibration_readings``' arrays as the reaction fit's clips (read tracks, states, true events)."""
    from lpm.eval.metrics import REACTION_TYPES, Event

    events: list[list[Event]] = [[] for _ in range(len(readings["read"]))]
    for clip, kind, frame in readings["events"]:
        events[int(clip)].append(Event(REACTION_TYPES[int(kind)], int(frame)))
    return CalibrationClips(readings["read"], readings["states"], events)


def train_state_net(motion: np.ndarray, states: np.ndarray, noise: ReadingNoise, cfg: StateTrainConfig,
                    net_cfg: StateReaderConfig | None = None, log=print) -> StateNet:
    """Fit the reader on true motion with probe errors drawn afresh each step.

    Args:
        motion: (N, F, NUM_MOTION); states: (N, F).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = StateNet(net_cfg or StateReaderConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Classes are unbalanced; weight them equally so listen vs idle is not ignored.
    counts = np.bincount(states.ravel(), minlength=len(STATE_NAMES)).astype(np.float32)
    weight = torch.from_numpy(counts.sum() / (len(STATE_NAMES) * np.maximum(counts, 1)))
    net.train()
    for step in range(cfg.steps):
        idx = rng.integers(0, len(motion), cfg.batch)
        x = torch.cat([scale_tracks(noise.apply(motion[i], rng)) for i in idx])  # (B, C, F)
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(states[idx]), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(json.dumps({"step": step + 1, "loss": round(loss.item(), 4)}))
    return net.eval()


def reader_tag(*paths: str | Path | None) -> str:
    """"_" + a short hash of the reader checkpoints' bytes (None skipped) and of how the face reader reads
    (``face.READ_SHIFTS``, ``fixations.FIXATIONS``): readings cached under it are redone when a reader changes."""
    from lpm.eval.face import READ_SHIFTS
    from lpm.eval.fixations import FIXATIONS

    digests = "".join(file_digest(p) for p in paths if p is not None) + repr(READ_SHIFTS) + repr(FIXATIONS)
    return "_" + hashlib.sha1(digests.encode()).hexdigest()[:12]


def train_states(run: str | Path, cfg: StateTrainConfig, probe_path: str | Path,
                 face_path: str | Path | None = None, head_path: str | Path | None = None,
                 log=print) -> dict[str, Any]:
    """The whole recipe (module docstring); writes ``RUN/model.safetensors``; returns its metadata ``extra``.

    The tracks are read as the bench reads them: the probe, with the face reader's channels when ``face_path``
    is given (``suites.face_path_or_none``) and the head pose reader's angles when ``head_path`` is."""
    from lpm.eval.suites import EDGE_FRAMES, face_path_or_none, head_path_or_none, read_tracks
    from lpm.eval.train import load_face, load_head, load_probe

    torch.set_num_threads(cfg.threads)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    probe, _ = load_probe(probe_path)
    face_path = face_path_or_none(face_path)
    face = None if face_path is None else load_face(face_path)[0]
    head_path = head_path_or_none(head_path)
    head = None if head_path is None else load_head(head_path)[0]

    def read(frames: np.ndarray) -> np.ndarray:
        return read_tracks(probe, face, frames, head=head).motion

    calib = calibration_readings(run, cfg, read, reader_tag(probe_path, face_path, head_path))
    noise = ReadingNoise.fit(list(calib["read"]), list(calib["true"]))
    perf = _cached(run / f"performances_{cfg.clips}_s{cfg.seed}.npz",
                   lambda: dict(zip(("motion", "states"), world_performances(cfg.clips, cfg.seed, cfg.seconds))))
    net = train_state_net(perf["motion"], perf["states"], noise, cfg, log=log)
    reader = StateReader(net)
    listen = calibration_readings(run, cfg, read, reader_tag(probe_path, face_path, head_path), name="reactions",
                                  clips=cfg.reaction_clips, seed=cfg.seed + 202, mode="listen")
    rules, rules_report = fit_reaction_rules(calibration_clips(listen), EDGE_FRAMES)
    log(json.dumps({"reaction_rules": rules_report}))
    pred = np.stack([reader.predict(m) for m in calib["read"]])
    true_motion = np.stack([reader.predict(m) for m in calib["true"]])
    extra = {"accuracy": {"calib_probe_tracks": float((pred == calib["states"]).mean()),
                          "calib_true_motion": float((true_motion == calib["states"]).mean()),
                          "calib_clips": int(len(pred))},
             "noise": {k: getattr(noise, k).tolist() for k in ("gain", "offset", "sigma")},
             "reaction_rules": rules_to_json(rules), "reaction_fit": rules_report,
             "reaction_clips": int(len(listen["read"])),
             "probe": str(probe_path), "face": None if face_path is None else str(face_path),
             "head": None if head_path is None else str(head_path)}
    save_checkpoint(run / "model.safetensors", net.state_dict(),
                    {"train": dataclasses.asdict(cfg), "net": dataclasses.asdict(net.cfg)}, STATE_KIND, extra)
    (run / "accuracy.json").write_text(json.dumps(extra, indent=1))
    return extra


def load_state_reader(path: str | Path) -> tuple[StateReader, dict[str, Any]]:
    """A trained state reader and its checkpoint metadata."""
    state, meta = load_checkpoint(path, STATE_KIND)
    net = meta["config"]["net"]
    model = StateNet(StateReaderConfig(width=net["width"], kernel=net["kernel"], dilations=tuple(net["dilations"])))
    load_into(model, state, str(path))
    return StateReader(model.eval()), meta
