"""The bench suites: which clips each system performs, reading the frames with the instruments, the metrics.

``quick``: every ``val`` clip (held-out identities, seen styles) and a few ``zeroshot`` clips; minutes on a CPU.
``full``: every ``val`` and ``zeroshot`` clip, plus a long session of ``--minutes``.
``long``: only the long session (45 minutes by default): identity and world-FID per minute, and their drift.
``listen``: the 80 listening clips of its own case set (``lpm.eval.LISTEN_DATA``), every one with every model but
the Base: listen F1 on ~50 reactions instead of the quick suite's 16 (about 10 minutes per model on a 2-core CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpm.data.clip import STATE_NAMES, read_clip, read_manifest, tensor_to_image
from lpm.data.video import read_mp4
from lpm.errors import LpmError
from lpm.eval import DEFAULT_FACE, DEFAULT_HEAD, DEFAULT_IDENTITY, DEFAULT_PROBE, DEFAULT_STATES
from lpm.eval import metrics as M
from lpm.eval.emotion_fit import clip_emotion
from lpm.eval.face import FaceReader, merge_face, read_face
from lpm.eval.fixations import FIXATIONS, FixationRule, fixation_gaze
from lpm.eval.head import HeadPoseReader, merge_head, read_head
from lpm.eval.identity import IdentityNet, embed_frames
from lpm.eval.identity_check import check_identity
from lpm.eval.probe import MotionProbe, ProbeTrack, read_frames
from lpm.eval.reaction_fit import reaction_mask, rules_from_json
from lpm.eval.scoring import FID_INTERVAL_CATEGORIES, ClipScore, metric_intervals, pooled_metrics
from lpm.eval.states import StateReader
from lpm.eval.systems import ClipInputs, System, SystemUnavailable, timed_stream
from lpm.world.identity import sample_identity
from lpm.world.motion import EMOTIONS, MOTION_INDEX, MOTION_NAMES

SUITES = ("quick", "full", "long", "listen")
QUICK_ZEROSHOT_CLIPS = 12
# Trained models on a 2-core CPU take 15-60 s per 4-s clip (``base`` samples offline with 3 forwards per step):
# in the quick suite they rate a fixed, evenly spread subset, the zero-shot share kept (name -> clips;
# "*" = any other model system). The report states each system's clip count.
# 12 clips (8 seen, 4 zero-shot) keep lip r's bootstrap interval near +-0.1; base costs ~4x per clip.
QUICK_MODEL_CLIPS = {"base": 4, "*": 12}
# The listen suite rates every clip with every model but the slow Base.
SUITE_MODEL_CLIPS = {"quick": QUICK_MODEL_CLIPS, "listen": {"base": 4, "*": 80}}
# ODE steps per window of ``base`` in the quick suite when --base-steps is not given (its default elsewhere: 8).
# With these and the default systems, the quick suite fits its 5-minute budget on a 2-core CPU.
QUICK_BASE_STEPS = 4
BUILTIN_SYSTEMS = ("truth", "traditional", "static")
# Reactions whose onset is this close to the clip's end are too short to see; they are not scored.
EDGE_FRAMES = 8
SPEAK = STATE_NAMES.index("speak")
# Categories over the clip suite: (split, modes); modes None = every mode.
CATEGORIES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "speaking": ("val", ("speak", "conversation")),
    "listening": ("val", ("listen", "conversation")),
    "conversation": ("val", ("conversation",)),
    "text_control": ("val", None),
    "seen": ("val", None),
    "zeroshot": ("zeroshot", None),
}
METRIC_KEYS: tuple[str, ...] = (
    "lipsync_r", "av_offset_frames", "silent_mouth_closed", "listen_f1", "listen_precision", "listen_recall",
    "reaction_delay_p50_s", "reaction_delay_p90_s", "state_acc", "pose_err_deg", "text_emotion_acc",
    "identity_sim", "identity_low_share", "identity_drift_per_min", "world_fid", "fps", "latency_p50_s",
    "latency_p95_s", "peak_rss_mb", "clips", "frames",
)


@dataclass
class Instruments:
    """The trained readers every metric goes through, with their own accuracy figures.

    ``identity_threshold``: split -> the identity similarity below which a frame counts as off-identity, fixed
    on the truth render when the bench runs (``identity_check``: the 1st percentile of its frames).
    ``face``: the face reader, whose eye, brow and mouth channels and emotion replace the probe's (None: the
    probe alone).
    ``probe_accuracy`` is then the accuracy of the merged reading (those channels from ``face_accuracy``, the head
    angles from the head pose reader's checkpoint when there is one).
    ``reaction_rules``: the reaction detector's rules in the reading's units, fitted with the state reader
    (``reaction_fit``); ``metrics.BUMP_RULES`` (the true motion's) for a state reader written before them.
    """

    probe: MotionProbe
    identity: IdentityNet
    states: StateReader
    probe_accuracy: dict
    identity_accuracy: dict
    states_accuracy: dict | None = None
    identity_threshold: dict[str, float] = field(default_factory=dict)
    face: FaceReader | None = None
    face_accuracy: dict | None = None
    reaction_rules: dict[str, M.BumpRule] = field(default_factory=lambda: dict(M.BUMP_RULES))
    # Per-class weights of the clip emotion decision (``emotion_fit``; the face reader's checkpoint), None = all 1.
    emotion_weights: list[float] | None = None
    # How the face reader's per-frame gaze becomes fixations (``fixations``); None = the per-frame reading.
    fixations: FixationRule | None = FIXATIONS
    # The head pose reader, whose pitch, roll and yaw replace the probe's (None: the probe's; its accuracy is in
    # ``probe_accuracy``).
    head: HeadPoseReader | None = None

    def read(self, frames: np.ndarray) -> ProbeTrack:
        """(F, H, W, 3) uint8 -> the motion track (the probe's, with the face and head readers' readings where
        there are readers)."""
        return read_tracks(self.probe, self.face, frames, self.fixations, head=self.head)


def read_tracks(probe: MotionProbe, face: FaceReader | None, frames: np.ndarray,
                fixations: FixationRule | None = FIXATIONS, head: HeadPoseReader | None = None) -> ProbeTrack:
    """The probe's track of frames (F, H, W, 3) uint8, with the head pose reader's angles (``head``) and the face
    reader's channels (``face``) merged in, its gaze held per fixation (``fixations``; the probe alone does not
    read gaze)."""
    track = read_frames(probe, frames)
    if head is not None:
        track = merge_head(track, read_head(head, frames))
    if face is None:
        return track
    track = merge_face(track, read_face(face, frames))
    if fixations is not None:
        track = dataclasses.replace(track, motion=fixation_gaze(track.motion, fixations))
    return track


def _reader_path_or_none(path: str | Path | None, flag: str, shipped: str, what: str) -> Path | None:
    if path is None or str(path).lower() in ("", "none"):
        return None
    if not Path(path).is_file():
        raise LpmError(f"{flag} {path} does not exist (train it with `lpm eval train-{flag[2:]}`, use the shipped "
                       f"{shipped}, or pass {flag} none to read {what} with the probe)")
    return Path(path)


def face_path_or_none(path: str | Path | None) -> Path | None:
    """A ``--face`` argument: None, "" or "none" = no face reader; else the checkpoint (which must exist)."""
    return _reader_path_or_none(path, "--face", DEFAULT_FACE, "every channel")


def head_path_or_none(path: str | Path | None) -> Path | None:
    """A ``--head`` argument: None, "" or "none" = no head pose reader; else the checkpoint (which must exist)."""
    return _reader_path_or_none(path, "--head", DEFAULT_HEAD, "the head pose")


def load_instruments(probe_path: str | Path = DEFAULT_PROBE, identity_path: str | Path = DEFAULT_IDENTITY,
                     states_path: str | Path = DEFAULT_STATES,
                     face_path: str | Path | None = DEFAULT_FACE,
                     head_path: str | Path | None = DEFAULT_HEAD) -> Instruments:
    """Load the motion probe, the face reader (``face_path_or_none``), the head pose reader
    (``head_path_or_none``), the state reader and the identity embedding."""
    from lpm.eval.state_train import load_state_reader
    from lpm.eval.train import load_face, load_head, load_identity, load_probe

    probe, pmeta = load_probe(probe_path)
    ident, imeta = load_identity(identity_path)
    states, smeta = load_state_reader(states_path)
    probe_acc = copy.deepcopy(pmeta["extra"]["accuracy"])
    face, face_acc, emotion_weights = None, None, None
    if (path := face_path_or_none(face_path)) is not None:
        face, fmeta = load_face(path)
        face_acc = fmeta["extra"]["accuracy"]
        emotion_weights = fmeta["extra"].get("emotion_weights")
        if emotion_weights is not None and (not isinstance(emotion_weights, list)
                                            or len(emotion_weights) != len(EMOTIONS)):
            raise LpmError(f"{path}: extra.emotion_weights must list {len(EMOTIONS)} weights ({', '.join(EMOTIONS)}), "
                           f"got {emotion_weights!r}; rerun `lpm eval fit-emotion --face {path}`")
        for split, acc in face_acc.items():
            if split in probe_acc:
                probe_acc[split]["channels"].update(acc["channels"])
                probe_acc[split]["emotion_acc"] = acc["emotion_acc"]
    head = None
    if (path := head_path_or_none(head_path)) is not None:
        head, hmeta = load_head(path)
        for split, acc in hmeta["extra"]["accuracy"].items():
            if split in probe_acc:
                probe_acc[split]["channels"].update(acc["channels"])
    rules = dict(M.BUMP_RULES)
    if "reaction_rules" in smeta["extra"]:
        try:
            rules = rules_from_json(smeta["extra"]["reaction_rules"])
        except (TypeError, ValueError) as e:
            raise LpmError(f"{states_path}: {e}") from None
    return Instruments(probe, ident, states, probe_acc, imeta["extra"]["accuracy"], smeta["extra"].get("accuracy"),
                       face=face, face_accuracy=face_acc, reaction_rules=rules, emotion_weights=emotion_weights,
                       head=head)


def load_motion_states(clip_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[M.Event]]:
    """A clip's true motion (F, NUM_MOTION) in MOTION_NAMES order, states (F,) int64 and reactions
    (``true_reactions``), without decoding its audio, video or references."""
    d = Path(clip_dir)
    with np.load(d / "motion.npz", allow_pickle=False) as z:
        motion = _motion_array(z["values"], tuple(str(n) for n in z["names"]))
    meta = json.loads((d / "meta.json").read_text())
    states = np.array([STATE_NAMES.index(x) for x in meta["states"]], np.int64)
    return motion, states, true_reactions(meta["events"])


def true_reactions(events: list[dict]) -> list[M.Event]:
    """The listening reactions among a clip's ``meta.json`` events."""
    return [M.Event(e["type"], int(e["frame"]), e.get("cue_frame")) for e in events if e["type"] in M.REACTION_TYPES]


def _motion_array(values: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Reorder stored motion columns to MOTION_NAMES."""
    return values[:, [names.index(n) for n in MOTION_NAMES]].astype(np.float32)


@dataclass
class ClipTruth:
    """What actually happened in a clip (for scoring)."""

    mode: str
    motion: np.ndarray  # (F, NUM_MOTION)
    states: np.ndarray  # (F,) int64
    reactions: list[M.Event]
    emotion: str


def load_clip(root: str | Path, row: dict) -> tuple[ClipInputs, ClipTruth]:
    """A world clip as system inputs plus its truth."""
    d = Path(root) / row["path"]
    clip = read_clip(d, load_video=False)
    meta = clip.meta
    video = read_mp4(d / "video.mp4")
    motion = _motion_array(clip.motion.numpy(), clip.motion_names)
    audio = clip.audio.numpy()
    identity = sample_identity(int(meta.extra["seeds"]["identity"]), meta.style)
    reactions = true_reactions(meta.events)
    inputs = ClipInputs(meta.id, meta.split, meta.style, meta.frames, audio[0], audio[1],
                        {k: tensor_to_image(v) for k, v in clip.refs.items()}, meta.caption,
                        float(np.median(motion[:, MOTION_INDEX["body_yaw"]])), identity, motion, video)
    truth = ClipTruth(str(meta.extra.get("mode", "")), motion, clip.states.numpy(), reactions,
                      str(meta.extra.get("emotion", "neutral")))
    return inputs, truth


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every few ms from /proc)."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            self._stop.wait(self.PERIOD_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())


@dataclass
class Reading:
    """One system's performance of one clip, as the instruments read it."""

    inputs_id: str
    split: str
    track: ProbeTrack
    identity_sim: np.ndarray  # (F,) cosine to the global reference's embedding
    compute_s: list[float] = field(default_factory=list)  # per chunk
    chunk_frames: list[int] = field(default_factory=list)  # per chunk
    needs_until: list[int] = field(default_factory=list)  # per chunk: frame up to which it needed audio
    peak_rss_mb: float = float("nan")
    thumbs: np.ndarray | None = None  # (THUMBS, H, W, 3) uint8 frames evenly spaced over the clip (report strip)


THUMBS = 6


def perform_and_read(system: System, inputs: ClipInputs, inst: Instruments) -> Reading:
    """Run a system over one clip (streamed, each chunk timed) and read its frames."""
    chunks, compute, needs = [], [], []
    with RssSampler() as rss:
        for chunk, secs, until in timed_stream(system, inputs):
            chunks.append(chunk)
            compute.append(secs)
            needs.append(until)
    frames = np.concatenate(chunks)
    if len(frames) != inputs.num_frames:
        raise SystemUnavailable(f"{system.name} gave {len(frames)} frames for {inputs.clip_id}, "
                                f"expected {inputs.num_frames}")
    ref = embed_frames(inst.identity, inputs.refs["global"][None])[0]
    thumbs = frames[np.linspace(0, len(frames) - 1, THUMBS).round().astype(int)].copy()
    return Reading(inputs.clip_id, inputs.split, inst.read(frames),
                   embed_frames(inst.identity, frames) @ ref, compute, [len(c) for c in chunks], needs, rss.peak_mb,
                   thumbs)


def speed_metrics(readings: list[Reading], system: System) -> dict:
    """fps, latency percentiles and peak RSS from the timed chunks."""
    if not system.measures_speed or not readings:
        return {"fps": None, "latency_p50_s": None, "latency_p95_s": None, "peak_rss_mb": None}
    frames = sum(len(r.track.motion) for r in readings)
    total = sum(sum(r.compute_s) for r in readings)
    lat = np.concatenate([M.stream_latencies(np.array(r.compute_s), *M.chunk_times(r.chunk_frames, r.needs_until))
                          for r in readings])
    return {"fps": frames / total if total > 0 else None, "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)), "peak_rss_mb": max(r.peak_rss_mb for r in readings)}


def clip_reactions(pred: np.ndarray, truth: ClipTruth, inst: Instruments) -> tuple[list[M.Event], list[M.Event]]:
    """The true reactions a clip is rated on and those the reaction rules detect in its read motion ``pred``
    ``(F, NUM_MOTION)``, both where reactions are allowed (``reaction_mask``)."""
    allowed = reaction_mask(truth.states, EDGE_FRAMES)
    n = len(allowed)
    true_ev = [e for e in truth.reactions if allowed[min(e.frame, n - 1)]]
    det = M.detect_reactions({c: pred[:, MOTION_INDEX[c]] for c in MOTION_NAMES}, allowed, inst.reaction_rules)
    return true_ev, det


def clip_score(reading: Reading, truth: ClipTruth, inst: Instruments,
               truth_features: np.ndarray | None) -> ClipScore:
    """What one clip contributes to the pooled metrics (every instrument reading done here, once)."""
    jaw = MOTION_INDEX["jaw_open"]
    pred = reading.track.motion
    speaking = truth.states == SPEAK
    n = len(speaking)
    has_speech = speaking.sum() > 2
    true_ev, det = clip_reactions(pred, truth, inst)
    threshold = inst.identity_threshold.get(reading.split)
    low = reading.identity_sim < threshold if threshold is not None else np.zeros(n, bool)
    return ClipScore(
        speak_pred=pred[speaking, jaw] if has_speech else np.zeros(0, np.float32),
        speak_true=truth.motion[speaking, jaw] if has_speech else np.zeros(0, np.float32),
        seq_pred=pred[:, jaw] if has_speech else None, seq_true=truth.motion[:, jaw] if has_speech else None,
        silent_jaw=pred[~speaking, jaw], match=M.match_events(true_ev, det),
        states_pred=inst.states.predict(pred), states_true=truth.states,
        pose_err_deg=M.angle_error_deg(pred[:, MOTION_INDEX["body_yaw"]],
                                       np.median(truth.motion[:, MOTION_INDEX["body_yaw"]])),
        emotion_hit=clip_emotion(reading.track.emotion_probs, inst.emotion_weights) == truth.emotion,
        identity_sim=reading.identity_sim, identity_low=low, features=reading.track.features,
        truth_features=truth_features)


def clip_scores(pairs: list[tuple[Reading, ClipTruth]], truth_features: list[np.ndarray] | None,
                inst: Instruments) -> list[ClipScore]:
    """``clip_score`` of each (reading, truth) pair; ``truth_features``: the truth render's probe features per pair."""
    feats = truth_features if truth_features is not None else [None] * len(pairs)
    return [clip_score(r, t, inst, f) for (r, t), f in zip(pairs, feats)]


def clip_metrics(pairs: list[tuple[Reading, ClipTruth]], truth_features: list[np.ndarray] | None,
                 inst: Instruments, system: System, category: str = "",
                 scores: list[ClipScore] | None = None) -> dict:
    """Every metric over a set of clips (one category) for one system; None where not measurable. ``ci95`` holds
    each pooled metric's 95 % bootstrap interval over the clips (``scoring.metric_intervals``). ``scores``: the
    pairs' ``clip_score`` when already computed."""
    out: dict = dict.fromkeys(METRIC_KEYS)
    out["ci95"] = {}
    if not pairs:
        return out
    if scores is None:
        scores = clip_scores(pairs, truth_features, inst)
    out.update(pooled_metrics(scores))
    out["ci95"] = {k: v for k, v in metric_intervals(scores, with_fid=category in FID_INTERVAL_CATEGORIES
                                                     and system.name != "truth").items() if v is not None}
    out.update(speed_metrics([r for r, _ in pairs], system))
    out["clips"] = len(pairs)
    out["frames"] = int(sum(len(r.track.motion) for r, _ in pairs))
    return out


def select_clips(data: str | Path, suite: str) -> list[dict]:
    """Manifest rows of the clips a suite performs."""
    rows = read_manifest(data)
    val = [r for r in rows if r["split"] == "val"]
    zs = [r for r in rows if r["split"] == "zeroshot"]
    if suite == "quick":
        zs = zs[:QUICK_ZEROSHOT_CLIPS]
    if suite == "listen":
        return val
    return val + zs if suite != "long" else []


@dataclass
class SystemResult:
    """One row of the report."""

    name: str
    available: bool
    reason: str | None
    note: str
    metrics: dict = field(default_factory=dict)  # category -> metric key -> value
    readings: list[Reading] = field(default_factory=list)  # kept for the plots
    scores: dict[str, dict[str, ClipScore]] = field(default_factory=dict)  # category -> clip id -> score (pairing)
    long: dict | None = None  # per-minute series of the long session


def spread_subset(rows: list[dict], count: int) -> list[int]:
    """Indices of ``count`` rows evenly spread over the ``val`` rows and the ``zeroshot`` rows (a third of
    them, at least one when there are any), in manifest order: fixed by the data set, no randomness."""
    if count >= len(rows):
        return list(range(len(rows)))
    val = [i for i, r in enumerate(rows) if r["split"] != "zeroshot"]
    zs = [i for i, r in enumerate(rows) if r["split"] == "zeroshot"]
    n_zs = min(len(zs), max(1 if zs else 0, count // 3))
    n_val = min(len(val), count - n_zs)

    def pick(idx: list[int], n: int) -> list[int]:
        return [idx[round(k * (len(idx) - 1) / max(1, n - 1))] for k in range(n)] if n > 1 else idx[:n]

    return sorted(set(pick(val, n_val) + pick(zs, n_zs)))


def check_identity_instrument(loaded: list[tuple[ClipInputs, ClipTruth]], inst: Instruments) -> dict[str, dict]:
    """Validate the identity embedding on the truth render of each split (``identity_check``) and fix
    ``inst.identity_threshold`` from it; returns split -> the check as a JSON-safe dict."""
    out = {}
    for split in sorted({inp.split for inp, _ in loaded}):
        clips = [(inp.style, inp.refs["global"], inp.truth_video) for inp, _ in loaded
                 if inp.split == split and inp.truth_video is not None]
        check = check_identity(lambda x: embed_frames(inst.identity, x), clips, split)
        if check is not None:
            inst.identity_threshold[split] = check.threshold
            out[split] = dataclasses.asdict(check)
    return out


def run_clip_suite(systems: list[System], rows: list[dict], loaded: list[tuple[ClipInputs, ClipTruth]],
                   inst: Instruments, log=print,
                   model_clips: dict[str, int] | None = None) -> tuple[list[SystemResult], list[ClipTruth]]:
    """Every available system over every clip (``loaded``: ``load_clip`` of each row); metrics per category.

    Args:
        model_clips: system name (``"*"``: any but the built-in ones) -> clips it rates (``spread_subset``).
    """
    truths = [t for _, t in loaded]
    results = []
    truth_features: dict[str, np.ndarray] = {}
    for system in systems:
        reason = system.unavailable()
        res = SystemResult(system.name, reason is None, reason, system.note)
        results.append(res)
        if reason is not None:
            log(f"{system.name}: not available: {reason}")
            continue
        t0 = time.time()
        cap = None
        if model_clips and system.name not in BUILTIN_SYSTEMS:
            cap = model_clips.get(system.name, model_clips.get("*"))
        keep = spread_subset(rows, cap) if cap else list(range(len(rows)))
        mine = [loaded[i] for i in keep]
        try:
            res.readings = [perform_and_read(system, inputs, inst) for inputs, _ in mine]
        except SystemUnavailable as e:
            res.available, res.reason, res.readings = False, str(e), []
            log(f"{system.name}: not available: {e}")
            continue
        if system.name == "truth":
            truth_features = {r.inputs_id: r.track.features for r in res.readings}
        log(f"{system.name}: {len(mine)} clips in {time.time() - t0:.1f} s")
        for cat, (split, modes) in CATEGORIES.items():
            pairs = [(r, t) for r, (inp, t) in zip(res.readings, mine)
                     if inp.split == split and (modes is None or t.mode in modes)]
            feats = [truth_features[r.inputs_id] for r, _ in pairs] if truth_features else None
            scores = clip_scores(pairs, feats, inst)
            res.scores[cat] = {r.inputs_id: sc for (r, _), sc in zip(pairs, scores)}
            res.metrics[cat] = clip_metrics(pairs, feats, inst, system, cat, scores)
    return results, truths
