"""Runtime measurements: ``python -m lpm.runtime.measure rig|dit|flat`` (figures for docs and the bench).

- ``rig``: a realtime session of the rig engine, partner speech streamed in 20 ms packets at real time and
  the character's own speech queued at intervals; fps and latency percentiles from ``SessionStats``.
- ``dit``: a DiT with random weights (a preset) and the shipped VAE, offline through the pipeline: ms per
  chunk per stage and sustained fps.
- ``flat``: memory (RSS) and time per chunk at chunk 10 and at chunk N of one long stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np
import torch

from lpm.runtime.engines import Character, ChunkInput, WorldCharacter, samples_for_frames

SR = 16000
PACKET_S = 0.02  # client audio packet length


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_rig(seconds: float, res: int) -> dict:
    from lpm.runtime.rig_engine import RigEngine
    from lpm.runtime.session import Session, SessionConfig
    from lpm.world.speech import PARTNER_VOICES, synthesize

    partner = np.concatenate([
        np.concatenate([synthesize(t, PARTNER_VOICES[0]).pcm, np.zeros(SR * 3, np.float32)])
        for t in ("How was your weekend?", "I went hiking in the hills.", "That sounds lovely, really.")])
    own = synthesize("Oh, it was great, thank you for asking. I mostly read and cooked.").pcm
    engine = RigEngine(Character(world=WorldCharacter("anime", 42)), res)
    session = Session(engine, SessionConfig(vad="auto")).start()
    stop = threading.Event()

    def client() -> None:
        packet, i, start = int(PACKET_S * SR), 0, time.monotonic()
        next_say = 5.0
        while not stop.is_set():
            now = time.monotonic() - start
            session.push_partner_audio(partner[i % len(partner):][:packet], native=True)
            i += packet
            if now > next_say:
                session.push_self_audio(own, native=True)
                next_say += 12.0
            time.sleep(max(0.0, start + i / SR - time.monotonic()))

    threading.Thread(target=client, daemon=True).start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in session.frames(timeout=1.0):
            if time.monotonic() > end:
                break
    stop.set()
    stats = session.stats.snapshot()
    stats["fps_overall"] = round(stats["frames"] / seconds, 2)
    stats["vad"] = session.vad_backend
    session.close()
    return stats


def random_dit(preset: str, latent: int | None = None, **overrides):
    from lpm.models.dit import DiT
    from lpm.models.dit_config import preset as get_preset

    torch.manual_seed(0)
    if latent:
        overrides.update(latent_height=latent, latent_width=latent)
    return DiT(get_preset(preset, attention="block_causal", **overrides)).eval()


def measure_dit(preset: str, chunks: int, steps: int, refiner: bool) -> dict:
    from lpm.models.latent_codec import load_codec
    from lpm.runtime.dit_engine import DEFAULT_VAE, DiTEngine, DiTEngineConfig
    from lpm.runtime.session import Session, SessionConfig

    model, codec = random_dit(preset), load_codec(DEFAULT_VAE)
    engine = DiTEngine(model, codec, Character(world=WorldCharacter("photo", 3)),
                       DiTEngineConfig(denoise_steps=steps, refiner=refiner))
    f = engine.frames_per_chunk
    pcm = (np.random.default_rng(0).standard_normal(samples_for_frames(chunks * f + 1)) * 0.05).astype(np.float32)
    with Session(engine, SessionConfig(realtime=False, vad="off")) as session:
        start = time.monotonic()
        session.push_self_audio(pcm, native=True)
        session.push_partner_audio(pcm, native=True)
        session.finish()
        n = sum(1 for _ in session.frames())
        wall = time.monotonic() - start
        stats = session.stats.snapshot()
    return {"preset": preset, "resolution": engine.resolution, "denoise_steps": steps, "refiner": refiner,
            "frames": n, "sustained_fps": round(n / wall, 2), "stage_ms_per_chunk": stats["stage_ms"],
            "threads": torch.get_num_threads()}


def measure_flat(chunks: int, preset: str, latent: int) -> dict:
    """Sequential steps of one long stream; time (median of 10 chunks) and RSS near chunk 10 and chunk N."""
    from lpm.models.vae import LpmVAE, VAEConfig
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig

    model = random_dit(preset, latent)
    codec = LpmVAE(VAEConfig()).eval()
    engine = DiTEngine(model, codec, Character(world=WorldCharacter("toon3d", 9)), DiTEngineConfig())
    f, la = engine.frames_per_chunk, engine.lookahead_frames
    rng = np.random.default_rng(0)
    prev, times, rss = 0, [], {}
    for k in range(chunks):
        end = samples_for_frames((k + 1) * f + la)
        pcm = (rng.standard_normal(end - prev) * 0.05).astype(np.float32)
        chunk = ChunkInput(k, k * f, pcm, pcm, end, "a calm person", 0.0)
        prev = end
        t = time.perf_counter()
        engine.step(chunk)
        times.append((time.perf_counter() - t) * 1000)
        if k + 1 in (10, 20, chunks):
            rss[k + 1] = round(rss_mb(), 1)
    early, late = statistics.median(times[10:20]), statistics.median(times[-10:])
    return {"chunks": chunks, "resolution": engine.resolution, "ms_per_chunk_at_10_20": round(early, 2),
            f"ms_per_chunk_last_10_of_{chunks}": round(late, 2), "rss_mb": rss,
            "kv_cache_mb": round(engine.cache.nbytes() / 2**20, 3), "max_time_position": engine.cache.max_time_position}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("rig", "dit", "flat"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--latent", type=int, default=8, help="flat: latent size (8 = 64 px)")
    p.add_argument("--chunks", type=int, default=24)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--refiner", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "rig":
        out = measure_rig(args.seconds, args.res)
    elif args.what == "dit":
        out = measure_dit(args.preset, args.chunks, args.steps, args.refiner)
    else:
        out = measure_flat(args.chunks, args.preset, args.latent)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
