"""The speed suite's engine part: the shipped Online model through the runtime's ``DiTEngine``.

Two measurements (``lpm bench --suite speed``, CPU), written into the speed report under ``engine``:

- ``levers``: per stage ms per chunk of each speed lever added in turn (``LEVERS``), the variants run round-robin
  chunk by chunk in one process, so a shared, noisy machine slows them alike. Per variant: wall and CPU ms of the
  generate stage (features + denoising steps; the commit apart), the decode, the frames' wait (generate without a
  deferred commit + decode) and fps pipelined (``frames / max(generate + commit, decode)``: the two stages on two
  cores) and sequential (``frames / sum``: one core).
- ``session``: a realtime ``Session`` with the last variant, both voices streamed at real time in 20 ms packets
  for ``seconds``: fps, audio-to-frame latency p50 / p95 and frames dropped (the figures of the server's ``stats``
  message, from the same ``SessionStats``), the generate time of the first and the last minute (flat or not) and
  the process RSS.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lpm.runtime.dit_engine import SERVING_COMPUTE, DiTEngine, DiTEngineConfig
from lpm.runtime.engines import SAMPLE_RATE, Character, ChunkInput, WorldCharacter, samples_for_frames
from lpm.runtime.stats import FPS_WINDOW_S

SHIPPED = "checkpoints/online_tiny.safetensors"
CHARACTER = WorldCharacter("photo", 1)
WARMUP_CHUNKS = 4  # fill the sink and window first: later chunks attend to a full cache
PACKET_S = 0.02


@dataclass(frozen=True)
class Lever:
    name: str
    settings: dict


LEVERS = (
    Lever("before: plain forwards, commit in the chunk, fp32", dict(chunk_context=False, defer_commit=False)),
    Lever("+ one context per chunk", dict(chunk_context=True, defer_commit=False)),
    Lever("+ commit deferred past the hand-off", dict(chunk_context=True, defer_commit=True)),
    Lever("+ int8 linears", dict(chunk_context=True, defer_commit=True, precision="int8")),
    Lever("+ bf16 attention", dict(chunk_context=True, defer_commit=True, **SERVING_COMPUTE)),
)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _noise_chunks(frames_per_chunk: int, lookahead: int, count: int, seed: int = 0) -> list[ChunkInput]:
    rng = np.random.default_rng(seed)
    out, prev = [], 0
    for k in range(count):
        end = samples_for_frames((k + 1) * frames_per_chunk + lookahead)
        pcm = (rng.standard_normal(end - prev) * 0.05).astype(np.float32)
        out.append(ChunkInput(k, k * frames_per_chunk, pcm, pcm[::-1].copy(), end, "", 0.0))
        prev = end
    return out


def measure_levers(checkpoint: str, chunks: int, log: Callable[[str], None]) -> list[dict]:
    """Each lever's per-stage figures over ``chunks`` measured chunks (round-robin, one torch thread)."""
    engines = [DiTEngine.load(Character(world=CHARACTER), DiTEngineConfig(checkpoint=checkpoint, **lever.settings))
               for lever in LEVERS]
    f = engines[0].frames_per_chunk
    times: list[dict[str, list[float]]] = [{} for _ in LEVERS]
    for k, chunk in enumerate(_noise_chunks(f, engines[0].lookahead_frames, WARMUP_CHUNKS + chunks)):
        for engine, record in zip(engines, times):
            stages, timings = dict(engine.stages()), {}
            wall, cpu = time.perf_counter(), time.thread_time()
            latents = stages["generate"](chunk, timings)
            generate = (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000
            wall, cpu = time.perf_counter(), time.thread_time()
            engine.settle(timings)
            commit = (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000
            wall, cpu = time.perf_counter(), time.thread_time()
            stages["decode"](latents, timings)
            decode = (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000
            if k < WARMUP_CHUNKS:
                continue
            if not engine.cfg.defer_commit:  # the commit ran inside the stage: split its share out (CPU pro rata)
                share = timings["generate.commit"] / generate[0]
                commit = (generate[0] * share, generate[1] * share)
                generate = (generate[0] - commit[0], generate[1] - commit[1])
            for key, value in (("generate", generate), ("commit", commit), ("decode", decode)):
                record.setdefault(f"{key}_ms", []).append(value[0])
                record.setdefault(f"{key}_cpu_ms", []).append(value[1])
        if k >= WARMUP_CHUNKS:
            log(f"speed engine: chunk {k - WARMUP_CHUNKS + 1}/{chunks}")
    rows = []
    for lever, engine, record in zip(LEVERS, engines, times):
        med = {key: round(statistics.median(values), 1) for key, values in record.items()}
        gen, commit, dec = med["generate_ms"], med["commit_ms"], med["decode_ms"]
        wait = gen + dec + (0.0 if engine.cfg.defer_commit else commit)  # the frames wait for the commit inline
        rows.append({
            "lever": lever.name, "settings": lever.settings, **med,
            "frames_wait_ms": round(wait, 1),
            "pipelined_fps": round(1000 * f / max(gen + commit, dec), 2),
            "sequential_fps": round(1000 * f / (gen + commit + dec), 2),
            "cpu_ms_per_chunk": round(med["generate_cpu_ms"] + med["commit_cpu_ms"] + med["decode_cpu_ms"], 1),
        })
        log(f"speed engine: {lever.name}: generate {gen} + commit {commit} + decode {dec} ms -> "
            f"{rows[-1]['pipelined_fps']} fps pipelined")
    return rows


def measure_session(checkpoint: str, settings: dict, seconds: float, log: Callable[[str], None]) -> dict:
    """A realtime session streamed at real time for ``seconds`` (see the module docstring)."""
    from lpm.runtime.session import Session, SessionConfig

    engine = DiTEngine.load(Character(world=CHARACTER), DiTEngineConfig(checkpoint=checkpoint, **settings))
    rss_start = _rss_mb()
    session = Session(engine, SessionConfig(vad="energy")).start()
    stop = threading.Event()
    rng = np.random.default_rng(1)
    packet = int(PACKET_S * SAMPLE_RATE)

    def client() -> None:  # both voices, paced by their own clock
        t0, k = time.monotonic(), 0
        while not stop.is_set() and k * PACKET_S < seconds:
            pcm = (rng.standard_normal(packet) * 0.05).astype(np.float32)
            session.push_self_audio(pcm, native=True)
            session.push_partner_audio(pcm[::-1].copy(), native=True)
            k += 1
            time.sleep(max(0.0, t0 + k * PACKET_S - time.monotonic()))
        session.finish()

    first_minute: dict | None = None
    feeder = threading.Thread(target=client, daemon=True)
    start = time.monotonic()
    feeder.start()
    frames = 0
    for _ in session.frames(timeout=seconds + 30):
        frames += 1
        elapsed = time.monotonic() - start
        if first_minute is None and elapsed >= min(60.0, seconds / 2):
            first_minute = session.stats.snapshot()
    stop.set()
    feeder.join(5)
    snap = session.stats.snapshot()
    session.close()
    result = {
        "seconds": seconds, "settings": settings, "frames": frames,
        **{k: snap[k] for k in ("fps", "latency_p50_s", "latency_p95_s", "dropped", "skipped_chunks", "padded_s",
                                "delay_s", "chunks")},
        "stage_ms_end": snap["stage_ms"],
        "stage_ms_first": (first_minute or snap)["stage_ms"],
        "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(_rss_mb(), 1),
    }
    log(f"speed engine: session {seconds:g} s: {frames / seconds:.1f} fps on average, {result['fps']} at the end, "
        f"latency p50 {result['latency_p50_s']} s p95 {result['latency_p95_s']} s, dropped {result['dropped']}")
    return result


def run_engine_speed(checkpoint: str = SHIPPED, chunks: int = 8, seconds: float = 30.0,
                     log: Callable[[str], None] = print) -> dict:
    """Both measurements at one torch thread per stage (the server's setting); a missing checkpoint is noted."""
    if not Path(checkpoint).is_file():
        return {"status": f"skipped: {checkpoint} does not exist"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        levers = measure_levers(checkpoint, chunks, log)
        session = measure_session(checkpoint, LEVERS[-1].settings, seconds, log) if seconds > 0 else None
    finally:
        torch.set_num_threads(threads)
    return {"status": "ok", "checkpoint": checkpoint, "threads_per_stage": 1, "chunks": chunks,
            "levers": levers, "session": session}


def engine_report_lines(engine: dict) -> list[str]:
    """The report.md section of ``run_engine_speed``'s result."""
    if engine.get("status") != "ok":
        return ["", f"## The shipped Online model through the runtime: {engine.get('status')}"]
    lines = [
        "",
        f"## The shipped Online model through the runtime ({engine['checkpoint']})",
        "",
        f"One torch thread per stage (the server's setting), median of {engine['chunks']} chunks after "
        f"{WARMUP_CHUNKS} (a full cache), the variants run round-robin chunk by chunk. ms per chunk of 4 frames; "
        "CPU = the thread's CPU time (what a shared machine cannot steal); the frames wait for generate + decode, "
        "and for the commit only where it is not deferred; fps pipelined = generate + commit and decode on two "
        "cores, sequential = on one.",
        "",
        "| lever | generate ms (CPU) | commit ms (CPU) | decode ms (CPU) | frames wait ms | CPU ms per chunk | "
        "fps pipelined | fps sequential |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in engine["levers"]:
        lines.append(
            f"| {r['lever']} | {r['generate_ms']:.0f} ({r['generate_cpu_ms']:.0f}) | {r['commit_ms']:.0f} "
            f"({r['commit_cpu_ms']:.0f}) | {r['decode_ms']:.0f} ({r['decode_cpu_ms']:.0f}) | "
            f"{r['frames_wait_ms']:.0f} | {r['cpu_ms_per_chunk']:.0f} | {r['pipelined_fps']:.2f} | "
            f"{r['sequential_fps']:.2f} |")
    s = engine.get("session")
    if s:
        first, end = s["stage_ms_first"], s["stage_ms_end"]
        lines += [
            "",
            f"Realtime session, last lever, both voices streamed at real time for {s['seconds']:g} s: "
            f"**{s['frames'] / s['seconds']:.1f} fps** on average ({s['frames']} frames shown), {s['fps']} fps over "
            f"the last {FPS_WINDOW_S:g} s and audio-to-frame latency **p50 {s['latency_p50_s']} s, p95 "
            f"{s['latency_p95_s']} s** (the `stats` message's figures), {s['dropped']} frames dropped, "
            f"{s['skipped_chunks']} chunks skipped, "
            f"clock delay {s['delay_s']} s; generate {first.get('generate', float('nan')):.0f} ms per chunk early, "
            f"{end.get('generate', float('nan')):.0f} ms at the end; RSS {s['rss_mb_start']:.0f} -> "
            f"{s['rss_mb_end']:.0f} MiB.",
        ]
    return lines
