"""The long session: one character in a conversation of many minutes (45 by default), streamed chunk by chunk.

Frames are never all held: each chunk is read by the probe and the identity embedding as it arrives, and only
the readings stay. Per minute: identity similarity to the reference, world-FID against the truth render of the
same minute, compute per chunk and resident memory. Over the session: every clip metric, and the drift slopes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lpm.eval import metrics as M
from lpm.eval.identity import embed_frames
from lpm.eval.probe import ProbeTrack
from lpm.eval.suites import ClipTruth, Instruments, Reading, RssSampler, SystemResult, clip_metrics
from lpm.eval.systems import FPS, ClipInputs, System, SystemUnavailable, timed_stream
from lpm.world.controller import perform_conversation
from lpm.world.dialogue import build_conversation
from lpm.world.identity import TRAIN_STYLES, sample_identity
from lpm.world.motion import EMOTIONS
from lpm.world.render import Renderer
from lpm.world.speech import SAMPLE_RATE
from lpm.world.synth import IDENTITY_SEED_BASE, caption, render_references

DEFAULT_MINUTES = 45.0
# The session's dialogue is scripted in pieces of this length (the world's dialogue builder plans short clips).
SEGMENT_S = 30.0
FRAMES_PER_MINUTE = 60 * FPS
# Frames gathered before the instruments read them (batching keeps the probe fast).
READ_BATCH = 240
# The first and last this-many minutes are compared for the identity target ("within 2%").
EDGE_MINUTES = 5


@dataclass
class LongSession:
    """Inputs and truth of a long session."""

    inputs: ClipInputs
    truth: ClipTruth


def build_session(minutes: float, seed: int = 0, res: int = 128, style: str | None = None) -> LongSession:
    """A held-out (val) character in a scripted conversation of ``minutes``, with its true performance."""
    rng = np.random.default_rng([seed, 45])
    style = style or TRAIN_STYLES[seed % len(TRAIN_STYLES)]
    identity = sample_identity(IDENTITY_SEED_BASE["val"] + int(rng.integers(0, 9_999_999)), style)
    emotion = "happy"
    intensity = 0.5
    seg_samples = int(SEGMENT_S * SAMPLE_RATE)
    total_frames = max(1, int(round(minutes * FRAMES_PER_MINUTE)))
    seg_frames = int(SEGMENT_S * FPS)
    selfs, partners, motions, states, reactions = [], [], [], [], []
    for k in range(0, total_frames, seg_frames):
        conv = build_conversation(rng, seg_samples, "conversation")
        perf = perform_conversation(conv, rng, emotion, intensity, 0.0, FPS)
        selfs.append(conv.self_pcm[:seg_samples])
        partners.append(conv.partner_pcm[:seg_samples])
        motions.append(perf.motion[:seg_frames])
        states += [["speak", "listen", "idle"].index(s) for s in perf.states[:seg_frames]]
        reactions += [M.Event(e["type"], k + e["frame"], k + e["cue_frame"]) for e in perf.events
                      if e["type"] in M.REACTION_TYPES]
    motion = np.concatenate(motions)[:total_frames]
    renderer = Renderer(identity, res)
    inputs = ClipInputs(f"long_{style}_{seed}", "val", style, total_frames,
                        np.concatenate(selfs)[: total_frames * SAMPLE_RATE // FPS],
                        np.concatenate(partners)[: total_frames * SAMPLE_RATE // FPS],
                        render_references(renderer), caption(identity, emotion, intensity, "conversation"),
                        0.0, identity, motion, None)
    truth = ClipTruth("conversation", motion, np.array(states[:total_frames], np.int64),
                      [e for e in reactions if e.frame < total_frames], emotion)
    assert emotion in EMOTIONS
    return LongSession(inputs, truth)


def _minute_series(values: np.ndarray) -> np.ndarray:
    """Mean of a per-frame series over each (whole or partial) minute."""
    n = int(np.ceil(len(values) / FRAMES_PER_MINUTE))
    return np.array([values[m * FRAMES_PER_MINUTE: (m + 1) * FRAMES_PER_MINUTE].mean() for m in range(n)])


def run_session(system: System, session: LongSession, inst: Instruments,
                truth_features: np.ndarray | None) -> tuple[Reading, dict]:
    """Stream a system through the session; returns its reading and per-minute series."""
    inputs = session.inputs
    ref = embed_frames(inst.identity, inputs.refs["global"][None])[0]
    tracks, sims, compute, pending, sizes, needs = [], [], [], [], [], []
    chunk_minute, rss_minute = [], []

    def read_pending() -> None:
        if pending:
            frames = np.concatenate(pending)
            tracks.append(inst.read(frames))
            sims.append(embed_frames(inst.identity, frames) @ ref)
            pending.clear()

    done = 0
    with RssSampler() as rss:
        for chunk, secs, until in timed_stream(system, inputs):
            pending.append(chunk)
            compute.append(secs)
            sizes.append(len(chunk))
            needs.append(until)
            chunk_minute.append(done // FRAMES_PER_MINUTE)
            done += len(chunk)
            if done % FRAMES_PER_MINUTE < len(chunk):
                rss_minute.append(RssSampler.rss_mb())
            if sum(len(p) for p in pending) >= READ_BATCH:
                read_pending()
        read_pending()
    if done != inputs.num_frames:
        raise SystemUnavailable(f"{system.name} gave {done} frames for the session, expected {inputs.num_frames}")
    track = ProbeTrack.concat(tracks)
    sim = np.concatenate(sims)
    reading = Reading(inputs.clip_id, inputs.split, track, sim, compute, sizes, needs, rss.peak_mb)
    minutes = _minute_series(sim)
    chunk_minute = np.array(chunk_minute)
    series = {
        "identity_sim_per_min": minutes.tolist(),
        "chunk_s_per_min": [float(np.mean(np.array(compute)[chunk_minute == m])) for m in range(len(minutes))],
        "rss_mb_per_min": rss_minute,
    }
    if truth_features is not None:
        series["world_fid_per_min"] = [
            M.frechet_distance(track.features[m * FRAMES_PER_MINUTE: (m + 1) * FRAMES_PER_MINUTE],
                               truth_features[m * FRAMES_PER_MINUTE: (m + 1) * FRAMES_PER_MINUTE])
            for m in range(len(minutes))]
    return reading, series


def run_long(systems: list[System], results: dict[str, SystemResult], minutes: float, inst: Instruments,
             seed: int = 0, res: int = 128, log=print) -> None:
    """Run the long session for every available system; fills ``results[name].metrics['long']`` and ``.long``."""
    t0 = time.time()
    session = build_session(minutes, seed, res)
    log(f"long session: {minutes:g} min scripted in {time.time() - t0:.1f} s")
    truth_features = None
    for system in systems:  # truth first (systems are in report order), so the others compare to it
        result = results[system.name]
        if system.unavailable() is not None:
            result.metrics["long"] = clip_metrics([], None, inst, system)
            continue
        t0 = time.time()
        reading, series = run_session(system, session, inst, truth_features)
        if system.name == "truth":
            truth_features = reading.track.features
        metrics = clip_metrics([(reading, session.truth)], None if truth_features is None else [truth_features],
                               inst, system)
        per_min = np.array(series["identity_sim_per_min"])
        metrics["identity_drift_per_min"] = M.drift_per_minute(per_min)
        k = min(EDGE_MINUTES, max(1, len(per_min) // 2))
        series["identity_last_vs_first"] = float(per_min[-k:].mean() / per_min[:k].mean())
        series["minutes"] = minutes
        result.metrics["long"] = {k_: (None if isinstance(v, float) and not np.isfinite(v) else v)
                                  for k_, v in metrics.items()}
        result.long = series
        log(f"{system.name}: long session in {time.time() - t0:.1f} s")
