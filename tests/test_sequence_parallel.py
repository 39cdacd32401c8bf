"""Sequence-parallel (Ulysses) DiT on 2 and 4 gloo CPU processes equals the single-process model: the uncached
forwards (Online mask with references, bidirectional Base), the streamed forward through the KV cache past the
window's eviction (float64, 1e-10), and a whole streaming ``Session`` with the refiner (its generator and refiner
threads each on their own communicator) frame for frame."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lpm.audio.mel import MelConfig
from lpm.errors import LpmError
from lpm.models import DiT, DiTConfig, KVCache
from lpm.models.vae import LpmVAE, VAEConfig
from lpm.parallel import SequenceGroup, SequenceParallelDiT, init_sequence_group
from lpm.parallel.ulysses import TokenShards
from lpm.runtime.dit_engine import DEFAULT_VAE
from lpm.runtime.engines import Engine
from lpm.training.distributed import close_group, free_port
from test_dit import NUM_CHUNKS, make_inputs, make_model, micro, stream

TOL = 1e-10  # float64: the same maths, heads batched differently
SR = 16000
SESSION_CHUNKS = 7  # window 2, sink 1: chunks 3.. evict


def parallel_cfg():
    # 6x6 latents with 2x2 patches: 9 tokens per frame and 27 reference tokens, so both shards are padded on 2
    # and on 4 ranks; 4 heads split over 2 or 4 ranks; the global reference also added token by token.
    return micro(latent_height=6, latent_width=6, reference_patch_size=2, num_heads=4, reference_concat=True)


def forwards(model) -> dict[str, torch.Tensor]:
    x, t, cond = make_inputs(model.dit if isinstance(model, SequenceParallelDiT) else model)
    with torch.no_grad():
        return {
            "online": model(x, t, cond),
            "base": model(x, t, cond, mode="bidirectional"),
            "streamed": stream_any(model, x, t, cond),
            "streamed_context": stream_any(model, x, t, cond, context=True),
        }


def stream_any(model, x, t, cond, context: bool = False) -> torch.Tensor:
    """``test_dit.stream`` through the cache the model makes (this rank's heads for a parallel one); ``context``:
    each chunk's forward through its ``prepare_chunk`` context."""
    if not isinstance(model, SequenceParallelDiT) and not context:
        return stream(model, x, t, cond)
    cfg, fc = model.cfg, model.cfg.frames_per_chunk
    parallel = isinstance(model, SequenceParallelDiT)
    cache = model.empty_cache(1, dtype=x.dtype) if parallel else KVCache.empty(cfg, 1, dtype=x.dtype)
    outs = []
    for c in range(x.shape[1] // fc):
        frames = slice(c * fc, (c + 1) * fc)
        start, end = model.audio_frame_range(c * fc, fc)
        chunk = dataclasses.replace(cond, audio_self=cond.audio_self[:, start:end],
                                    audio_partner=cond.audio_partner[:, start:end], audio_start_frame=start,
                                    pose=cond.pose[:, frames])
        extra = {"context": model.prepare_chunk(chunk, cache)} if context else {}
        outs.append(model(x[:, frames], t[:, frames], chunk, cache=cache, update_cache=True, **extra))
    assert cache.chunks_seen == x.shape[1] // fc and (cfg.num_heads // cache.slot_k[0].shape[1] > 1) == parallel
    return torch.cat(outs, dim=1)


def session_parts():
    torch.manual_seed(0)
    cfg = DiTConfig(latent_height=8, latent_width=8, dim=64, num_blocks=2, num_heads=4, ffn_dim=128, text_dim=32,
                    text_layers=1, text_heads=2, audio_dim=32, audio_layers=1, mel=MelConfig(n_mels=16),
                    attention="block_causal", window_chunks=2)
    model, codec = DiT(cfg).eval(), LpmVAE(VAEConfig(channels=(8, 8, 8), norm_groups=4)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.linear.weight, std=0.5)  # a non-zero prediction
    return model, codec


def session_engine(model, codec):
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
    from lpm.runtime.engines import Character

    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return DiTEngine(model, codec, Character(images={"global": image}), DiTEngineConfig(refiner=True, seed=3))


def run_session(model, codec, lead=None, realtime: bool = False) -> tuple[np.ndarray, dict]:
    """An offline (or realtime) session over ``SESSION_CHUNKS`` chunks of noise; ``lead`` wraps the engine."""
    from lpm.runtime.session import Session, SessionConfig

    pcm = (np.random.default_rng(2).standard_normal(SR * SESSION_CHUNKS // 6) * 0.1).astype(np.float32)
    engine = session_engine(model, codec)
    with Session(lead(engine) if lead else engine, SessionConfig(realtime=realtime, vad="off")) as session:
        session.push_self_audio(pcm, native=True)
        session.push_partner_audio(pcm[::-1].copy(), native=True)
        session.finish()
        frames = [image for _, image in session.frames(timeout=60)]
        assert session.error is None, session.error
        stats = session.stats.snapshot()
    return np.stack(frames), stats


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = init_sequence_group("cpu")
    results = forwards(SequenceParallelDiT(make_model(parallel_cfg()), group))
    model, codec = session_parts()
    results["session"] = torch.from_numpy(run_session(SequenceParallelDiT(model, group), codec)[0])
    close_group()
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    results = forwards(make_model(parallel_cfg()))
    results["session"] = torch.from_numpy(run_session(*session_parts())[0])
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_equals_single_process(world, single, tmp_path):
    out = tmp_path / "parallel.pt"
    mp.spawn(_worker, args=(world, free_port(), out), nprocs=world, join=True)
    got = torch.load(out)
    assert NUM_CHUNKS > 1 + 2  # the streamed forward runs past the first eviction
    for key in ("online", "base", "streamed", "streamed_context"):
        ref = single[key]
        assert ref.abs().max() > 0
        assert (got[key] - ref).abs().max() <= TOL * ref.abs().max(), key
    assert (single["streamed"] - single["online"]).abs().max() <= TOL * single["online"].abs().max()
    frames, ref = got["session"].numpy().astype(int), single["session"].numpy().astype(int)
    assert frames.shape == ref.shape and len(ref) >= 4 * SESSION_CHUNKS - 4
    assert np.abs(frames - ref).max() <= 1  # uint8 frames: fp32 round-off may move a value across a rounding edge


def test_token_shards_order_is_a_permutation_of_the_real_tokens():
    shards = TokenShards(world_size=3, ref_tokens=5, frames=2, frame_tokens=7)
    order = shards.order()
    assert shards.local_length == 2 + 2 * 3
    assert len(order) == 5 + 2 * 7 and len(set(order.tolist())) == len(order)
    # gather what each rank holds, as the all-to-all would, and read it back in canonical order
    refs = torch.arange(5.0)[None, :, None]
    video = 100 + torch.arange(14.0).reshape(1, 2, 7, 1)
    local = [torch.cat([shards.shard_refs(refs, r), shards.shard_video(video, r).reshape(1, -1, 1)], 1)
             for r in range(3)]
    gathered = torch.cat(local, 1)[0, :, 0]
    assert torch.equal(gathered[order], torch.cat([refs.reshape(-1), video.reshape(-1)]))


def test_heads_must_divide_by_the_group():
    with pytest.raises(LpmError, match="num_heads divisible by 3"):
        SequenceParallelDiT(make_model(parallel_cfg()), SequenceGroup(rank=0, world_size=3))


def _generate_args(tmp_path: Path, out: Path) -> list[str]:
    return ["generate", "--reference", str(tmp_path / "face.png"), "--audio", str(tmp_path / "self.wav"),
            "--checkpoint", str(tmp_path / "online.safetensors"), "--vae", DEFAULT_VAE, "--seed", "1",
            "--out", str(out)]


def _generate_worker(rank: int, port: int, tmp_path: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # what torchrun sets: `lpm generate` then splits its forwards
    from lpm.cli import main

    assert main(_generate_args(tmp_path, tmp_path / "parallel.mp4")) == 0
    close_group()


def generate_inputs(tmp_path: Path) -> None:
    """A random Online checkpoint (2 heads), 1 s of voice (6 chunks: past eviction) and a reference image."""
    from PIL import Image

    from lpm.data.video import write_wav
    from test_generate import online_checkpoint

    online_checkpoint(tmp_path / "online.safetensors")
    t = np.arange(SR) / SR
    write_wav(tmp_path / "self.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.3))[None], SR)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "face.png")


def test_generate_under_two_processes_writes_the_single_process_video(tmp_path, one_thread):
    from lpm.cli import main
    from lpm.data.video import read_mp4

    generate_inputs(tmp_path)  # 2 heads: one per rank
    assert main(_generate_args(tmp_path, tmp_path / "single.mp4")) == 0
    mp.spawn(_generate_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    single, parallel = read_mp4(tmp_path / "single.mp4"), read_mp4(tmp_path / "parallel.mp4")
    assert parallel.shape == single.shape == (24, 128, 128, 3)
    assert single.astype(float).std() > 5  # a picture, not a flat frame
    # the frames the two runs encode agree within 1/255 (test above); H.264 may spread such a difference a little
    assert np.abs(parallel.astype(int) - single.astype(int)).mean() < 0.5


class Slowed(Engine):
    """``engine`` with its first stage taking ``seconds`` longer (a slow device)."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.engine, self.seconds = engine, seconds
        self.name, self.frames_per_chunk = engine.name, engine.frames_per_chunk
        self.lookahead_frames, self.resolution = engine.lookahead_frames, engine.resolution
        self.compute_budget_s = engine.compute_budget_s

    def stages(self):
        (name, first), *rest = self.engine.stages()

        def slow(chunk, timings):
            time.sleep(self.seconds)
            return first(chunk, timings)

        return [(name, slow), *rest]

    def skip(self, chunk) -> None:
        self.engine.skip(chunk)

    def settle(self, timings) -> None:
        self.engine.settle(timings)

    def close(self) -> None:
        self.engine.close()


def _leader_worker(rank: int, port: int, out: Path) -> None:
    from lpm.runtime.follow import LeaderEngine, follow

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = init_sequence_group("cpu")
    for realtime in (False, True):  # only rank 0 has the audio and the clock; rank 1 follows
        model, codec = session_parts()
        model = SequenceParallelDiT(model, group)
        if rank == 0:  # realtime: rank 0 made slow, so that its clock skips chunks
            lead = (lambda e: LeaderEngine(Slowed(e, 0.5), group)) if realtime else (lambda e: LeaderEngine(e, group))
            frames, stats = run_session(model, codec, lead, realtime)
            np.save(out / f"frames_{realtime}.npy", frames)
            (out / f"stats_{realtime}.json").write_text(json.dumps(stats))
        else:
            (out / f"followed_{realtime}.txt").write_text(str(follow(session_engine(model, codec), group)))
    close_group()


def test_live_session_led_by_rank_0_and_followed(single, tmp_path):
    mp.spawn(_leader_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    offline = np.load(tmp_path / "frames_False.npy")
    assert offline.shape == single["session"].shape
    assert np.abs(offline.astype(int) - single["session"].numpy().astype(int)).max() <= 1
    for realtime in (False, True):
        stats = json.loads((tmp_path / f"stats_{realtime}.json").read_text())
        followed = int((tmp_path / f"followed_{realtime}.txt").read_text())
        assert followed == stats["chunks"] > 0  # the follower generated exactly the chunks rank 0 did
    live = json.loads((tmp_path / "stats_True.json").read_text())
    assert live["skipped_chunks"] > 0 and live["frames"] > 0  # rank 0's clock skipped chunks; rank 1 followed
