"""A staged pipeline across processes (gloo): the stages of simulated devices overlap, the links bound how far a
fast stage runs ahead of a slow one, and a DiT engine's generator -> refiner -> decode on three ranks gives the
frames of one process running the same stages in turn."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lpm.errors import LpmError
from lpm.parallel.stages import StagedPipeline
from lpm.training.distributed import close_group, free_port

CHUNKS = 10
CAPACITY = 1


def simulated(seconds: dict[str, float]):
    """Three stages whose work is a known function of the item and a fixed time on a simulated device."""

    def stage(name, fn):
        def run(x, timings):
            time.sleep(seconds[name])  # the device is busy; the host process waits, as for a GPU kernel
            return fn(x)

        return name, run

    return [stage("generate", lambda x: x + 1), stage("refine", lambda x: x * 2), stage("decode", lambda x: x - 3)]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")


EVEN = {"generate": 0.1, "refine": 0.1, "decode": 0.1}  # seconds of simulated device time per chunk
SLOW_REFINER = {"generate": 0.005, "refine": 0.12, "decode": 0.005}


def _simulated_worker(rank: int, port: int, out: Path) -> None:
    _init(rank, 3, port)
    for name, seconds in (("even", EVEN), ("slow_refiner", SLOW_REFINER)):  # two pipelines, one after the other
        pipe = StagedPipeline(simulated(seconds), capacity=CAPACITY)
        results = list(pipe.run(range(CHUNKS) if rank == 0 else None))
        torch.distributed.barrier()
        (out / f"{name}{rank}.pkl").write_bytes(pickle.dumps((results, pipe.record)))
    close_group()


@pytest.fixture(scope="module")
def simulated_runs(tmp_path_factory) -> dict[str, tuple[list, dict]]:
    """Both simulated pipelines on 3 processes (one spawn): per run, rank 0's results and every stage's spans."""
    out = tmp_path_factory.mktemp("staged")
    mp.spawn(_simulated_worker, args=(free_port(), out), nprocs=3, join=True)
    runs = {}
    for name in ("even", "slow_refiner"):
        loaded = [pickle.loads((out / f"{name}{r}.pkl").read_bytes()) for r in range(3)]
        runs[name] = loaded[0][0], {rec.stage: rec.spans for _, rec in loaded}
    return runs


def test_stages_on_three_processes_overlap(simulated_runs):
    results, spans = simulated_runs["even"]
    assert results == [(i + 1) * 2 - 3 for i in range(CHUNKS)]  # every chunk, in order, through every stage
    start = min(s for st in spans.values() for _, s, _ in st)
    end = max(e for st in spans.values() for _, _, e in st)
    sequential = CHUNKS * sum(EVEN.values())
    # pipelined: about (CHUNKS + 2) stage times instead of 3 * CHUNKS
    assert end - start < 0.6 * sequential, (end - start, sequential)
    overlapping = sum(
        1 for (_, a0, a1) in spans["generate"] for (_, b0, b1) in spans["refine"] if a0 < b1 and b0 < a1
    )
    assert overlapping >= CHUNKS // 2


def test_links_bound_how_far_a_fast_stage_runs_ahead(simulated_runs):
    results, spans = simulated_runs["slow_refiner"]
    assert results == [(i + 1) * 2 - 3 for i in range(CHUNKS)]
    refine_started = {i: s for i, s, _ in spans["refine"]}
    # when the generator starts chunk k, the refiner has started chunk k - lead; the link holds at most
    # CAPACITY in flight and CAPACITY queued, the refiner one, the generator the one it is making
    bound = 2 * CAPACITY + 2
    leads = [k - max([j for j, s in refine_started.items() if s <= start] or [-1]) for k, start, _ in
             spans["generate"]]
    assert max(leads) <= bound, leads
    assert max(leads) >= 2  # it did run ahead (the bound is what stopped it, not lockstep)


def test_a_pipeline_needs_one_process_per_stage():
    with pytest.raises(LpmError, match="torchrun"):
        StagedPipeline(simulated({"generate": 0, "refine": 0, "decode": 0}))


def engine_and_chunks():
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
    from lpm.runtime.engines import Character, ChunkInput, samples_for_frames
    from test_sequence_parallel import session_parts  # imported here: the simulated workers need none of it

    model, codec = session_parts()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    engine = DiTEngine(model, codec, Character(images={"global": image}), DiTEngineConfig(refiner=True, seed=3))
    f, la = engine.frames_per_chunk, engine.lookahead_frames
    pcm = (rng.standard_normal(samples_for_frames(6 * f + la)) * 0.1).astype(np.float32)
    chunks, taken = [], 0
    for k in range(6):
        end = samples_for_frames((k + 1) * f + la)
        chunks.append(ChunkInput(k, k * f, pcm[taken:end], pcm[::-1][taken:end].copy(), end, "", 0.0))
        taken = end
    return engine, chunks


def _engine_worker(rank: int, port: int, out: Path) -> None:
    _init(rank, 3, port)
    engine, chunks = engine_and_chunks()  # the same weights and seeds on every rank; each runs its own stage
    frames = list(StagedPipeline(engine.stages(), capacity=CAPACITY).run(chunks if rank == 0 else None))
    close_group()
    if rank == 0:
        np.save(out, np.concatenate(frames))


def test_dit_engine_stages_across_processes_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    engine, chunks = engine_and_chunks()
    assert [name for name, _ in engine.stages()] == ["generate", "refine", "decode"]
    single = np.concatenate([engine.step(c) for c in chunks])
    out = tmp_path / "frames.npy"
    mp.spawn(_engine_worker, args=(free_port(), out), nprocs=3, join=True)
    staged = np.load(out)
    assert staged.shape == single.shape == (6 * engine.frames_per_chunk, 64, 64, 3)
    assert np.abs(staged.astype(int) - single.astype(int)).max() <= 1


def _generate_stages_worker(rank: int, port: int, tmp_path: Path) -> None:
    from lpm.cli import main
    from test_sequence_parallel import _generate_args

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert main([*_generate_args(tmp_path, tmp_path / "staged.mp4"), "--refiner", "--stages"]) == 0
    close_group()


def test_generate_with_one_rank_per_stage_writes_the_single_process_video(tmp_path):
    from lpm.cli import main
    from lpm.data.video import read_mp4
    from test_sequence_parallel import _generate_args, generate_inputs

    torch.set_num_threads(1)
    generate_inputs(tmp_path)
    assert main([*_generate_args(tmp_path, tmp_path / "single.mp4"), "--refiner"]) == 0
    mp.spawn(_generate_stages_worker, args=(free_port(), tmp_path), nprocs=3, join=True)
    single, staged = read_mp4(tmp_path / "single.mp4"), read_mp4(tmp_path / "staged.mp4")
    assert staged.shape == single.shape == (24, 128, 128, 3) and single.astype(float).std() > 5
    assert np.abs(staged.astype(int) - single.astype(int)).mean() < 0.5
