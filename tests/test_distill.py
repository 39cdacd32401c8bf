"""Distillation: student inputs and rollout equal streaming, ``lpm distill ode`` / ``dmd`` end to end on a
micro DiT, resume after SIGKILL, and FSDP over two processes giving the single-process losses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from base_fixtures import MICRO, make_dataset, make_vae
from killing import kill_after_checkpoint, rerun_until
from lpm.config import ConfigError
from lpm.diffusion import FlowMatching
from lpm.distill.dmd import DmdDistiller, dmd_gradient, load_dmd_config
from lpm.distill.ode import OdeDistiller, load_ode_config
from lpm.distill.student import causal_inputs, face_weighted_error, rollout, student_times, teacher_grid
from lpm.models import load_dit
from lpm.training.base_trainer import BaseTrainer, load_base_config
from lpm.training.conditioned import ConditionedDiT
from lpm.training.distributed import close_group, free_port

TRAIN_KEYS = [k for k in MICRO if not k.startswith("model.")]  # the student's shape comes from the teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Data, VAE and a Base run (2 steps: random-ish weights are enough to distill from)."""
    root = tmp_path_factory.mktemp("distill")
    data, vae = make_dataset(root / "data"), make_vae(root / "vae.safetensors")
    cfg = load_base_config("tiny", None, [*MICRO, "steps=2", f"cache_dir={root / 'cache'}"])
    BaseTrainer(cfg, data, str(vae), root / "base").run()
    return data, vae, root / "base"


def test_teacher_grid_refines_student_times():
    times = student_times(2, 3.0)
    assert times[0] == 1.0 and times[-1] == 0.0 and abs(times[1] - 0.75) < 1e-6
    grid, index = teacher_grid(times, 3, 3.0)
    assert len(grid) == 7 and index == [0, 3, 6]
    assert torch.allclose(grid[index], torch.tensor(times))


def test_causal_inputs_clean_before_the_chunk_noisy_from_it():
    b, s, f = 3, 2, 6
    states = torch.randn(b, s, f, 2, 2, 2)
    x_0 = torch.randn(b, f, 2, 2, 2)
    times = [1.0, 0.75, 0.0]
    inp = causal_inputs(states, x_0, times, torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1]), frames_per_chunk=2)
    assert torch.equal(inp.x_t[0], states[0, 1])  # chunk 0: no clean context
    assert torch.equal(inp.x_t[1, :2], x_0[1, :2]) and torch.equal(inp.x_t[1, 2:], states[1, 0, 2:])
    assert torch.equal(inp.t[2], torch.tensor([0, 0, 0, 0, 0.75, 0.75]))
    assert torch.equal(inp.loss_mask[1], torch.tensor([0, 0, 1, 1, 0, 0.0]))


def _micro_student(world) -> tuple[ConditionedDiT, object]:
    data, vae, base = world
    cfg = load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "pairs=2", "pair_batch=2", "steps=0"])
    trainer = OdeDistiller(cfg, data, str(vae), base.parent / "probe_student")
    trainer._load_data()
    trainer._build_model()
    return trainer


def test_rollout_equals_full_causal_forwards(world):
    trainer = _micro_student(world)
    model, cfg = trainer.model.eval(), trainer.dit_cfg
    batch = trainer.sampler.assemble(trainer.sampler.windows(np.random.default_rng(0), 1))
    shape = tuple(batch.x_0.shape)
    times = trainer.times
    g = torch.Generator().manual_seed(0)
    noise, renoise = torch.randn(shape, generator=g), torch.randn((1, *shape), generator=g)
    flow = FlowMatching(trainer.cfg.flow)
    with torch.no_grad():
        streamed = rollout(model, flow, batch.cond, shape, times, noise, renoise, None, cfg).video
        # The same generation with uncached block-causal forwards over the frames so far.
        fpc, done = cfg.frames_per_chunk, []
        for c in range(shape[1] // fpc):
            x = noise[:, c * fpc:(c + 1) * fpc]
            for i in range(len(times) - 1):
                seq = torch.cat([*done, x], 1)
                t = torch.cat([torch.zeros(1, c * fpc), torch.full((1, fpc), times[i])], 1)
                cond = dataclasses.replace(batch.cond, pose=batch.cond.pose[:, :seq.shape[1]],
                                           motion=batch.cond.motion[:, :seq.shape[1]])
                x_0 = flow.x0(model(seq, t, cond)[:, -fpc:], x, t[:, -fpc:])
                if i < len(times) - 2:
                    x = (1 - times[i + 1]) * x_0 + times[i + 1] * renoise[i, :, c * fpc:(c + 1) * fpc]
            done.append(x_0)
        full = torch.cat(done, 1)
    assert torch.allclose(streamed, full, atol=1e-4), (streamed - full).abs().max()


def test_dmd_gradient_is_the_normalised_score_gap():
    x = torch.randn(2, 2, 3, 2, 2, requires_grad=True)
    real, fake = torch.randn(2, 2, 3, 2, 2), torch.randn(2, 2, 3, 2, 2)
    out = dmd_gradient(x, real, fake)
    out.loss.backward()
    norm = (x.detach() - real).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1, 1)
    assert torch.allclose(out.grad, (fake - real) / norm)
    assert torch.allclose(x.grad, out.grad / (2 * x[0].numel()))  # batch mean of per-sample sums / size
    same = dmd_gradient(x, real, real.clone())
    assert same.grad.abs().max() == 0  # matching scores: nothing to move


def test_ode_stage_writes_an_online_checkpoint_and_fits_its_pairs(world, tmp_path):
    data, vae, base = world
    run = tmp_path / "ode"
    cfg = load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "pairs=4", "pair_batch=2", "steps=30",
                                 "lr=3e-3", "checkpoint_every=30", "batch=4", "sample_every=30"])
    trainer = OdeDistiller(cfg, data, str(vae), run)
    result = trainer.run()
    assert result["step"] == 30
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first, (first, last)  # regression onto 4 fixed trajectories goes down
    assert len(list((run / "pairs").glob("*.safetensors"))) == 2
    student = load_dit(run / "dit_ema.safetensors")
    assert student.cfg.attention == "block_causal"
    from lpm.training.checkpoint import read_metadata

    online = read_metadata(run / "dit_ema.safetensors")["extra"]["online"]
    assert online["sampler"] == "renoise" and online["timesteps"] == trainer.times
    assert (run / "samples" / "step_000030.mp4").is_file()


def test_ode_stage_on_data_adds_the_reference_path_and_needs_no_pairs(world, tmp_path):
    data, vae, base = world
    run = tmp_path / "ode_data"
    cfg = load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=data", "reference_concat=true",
                                 "steps=3", "batch=2", "checkpoint_every=3"])
    trainer = OdeDistiller(cfg, data, str(vae), run)
    result = trainer.run()
    assert result["step"] == 3 and not (run / "pairs").exists()  # no teacher trajectories
    student = load_dit(run / "dit_ema.safetensors")
    assert student.cfg.reference_concat and student.cfg.attention == "block_causal"
    assert student.reference_in.weight.abs().sum() > 0  # trained from zero
    with pytest.raises(ConfigError, match="target"):
        load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=teachers"])


def test_ode_stage_regresses_its_own_rollouts(world, tmp_path):
    """own_rollout=1: every step streams the student through its KV cache and regresses that onto the data."""
    data, vae, base = world
    run = tmp_path / "ode_own"
    cfg = load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=data", "own_rollout=1", "steps=2",
                                 "batch=2", "checkpoint_every=2"])
    result = OdeDistiller(cfg, data, str(vae), run).run()
    assert result["step"] == 2
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert steps and all(r["own_rollout"] == 1.0 and math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    teacher = load_dit(Path(base) / "dit_ema.safetensors").state_dict()
    student = load_dit(run / "dit.safetensors").state_dict()
    assert any(not torch.equal(teacher[k], v) for k, v in student.items() if k in teacher)  # it trained
    with pytest.raises(ConfigError, match="own_rollout"):
        load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "own_rollout=0.5"])  # needs target=data
    with pytest.raises(ConfigError, match="own_rollout"):
        load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=data", "own_rollout=2"])


def test_dmd_stage_updates_generator_and_fake_score(world, tmp_path):
    data, vae, base = world
    ode = tmp_path / "ode"
    OdeDistiller(load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "pairs=2", "pair_batch=2", "steps=1"]),
                 data, str(vae), ode).run()
    run = tmp_path / "dmd"
    cfg = load_dmd_config(None, [*TRAIN_KEYS, f"teacher={base}", f"student={ode}", "steps=4", "batch=2",
                                 "generator_every=2", "lr=1e-3", "checkpoint_every=4"])
    trainer = DmdDistiller(cfg, data, str(vae), run)
    trainer.run()
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert [("dmd_loss" in r) for r in rows] == [False, True, False, True]  # generator every 2nd iteration
    assert all(r["fake_loss"] > 0 for r in rows)
    state = torch.load(run / "train_state.pt", weights_only=False)
    assert "fake" in state and "fake_optimizer" in state
    teacher = ConditionedDiT(load_dit(base / "dit_ema.safetensors")).state_dict()
    assert any(not torch.equal(state["fake"][k], teacher[k]) for k in teacher)  # the fake score moved
    ode_student = ConditionedDiT(load_dit(ode / "dit.safetensors")).state_dict()
    assert any(not torch.equal(state["model"][k], ode_student[k]) for k in ode_student)  # so did the generator


def test_face_weighted_error_counts_only_weighted_cells():
    pred, target = torch.zeros(2, 2, 3, 4, 4), torch.zeros(2, 2, 3, 4, 4)
    pred[:, :, :, :2] = 5.0  # wrong on the top half only
    weights = torch.zeros(2, 2, 4, 4)
    weights[:, :, 2:] = 1.0  # ...which carries no weight
    assert torch.equal(face_weighted_error(pred, target, weights), torch.zeros(2))
    weights[1, :, :2] = 3.0  # sample 1 weighs the wrong half 3x
    err = face_weighted_error(pred, target, weights)
    assert err[0] == 0 and torch.isclose(err[1], torch.tensor(25.0 * 3 / 4))


def test_dmd_regression_anchor_logs_and_validates(world, tmp_path):
    """regression > 0: the generator's loss adds the rollout's error against its data window (logged)."""
    data, vae, base = world
    ode = tmp_path / "ode"
    OdeDistiller(load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=data", "steps=1"]),
                 data, str(vae), ode).run()
    run = tmp_path / "dmd"
    cfg = load_dmd_config(None, [*TRAIN_KEYS, f"teacher={base}", f"student={ode}", "steps=2", "batch=2",
                                 "generator_every=1", "regression=0.5"])
    DmdDistiller(cfg, data, str(vae), run).run()
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["regression"]) and r["regression"] > 0 for r in rows)
    with pytest.raises(ConfigError, match="regression"):
        load_dmd_config(None, [*TRAIN_KEYS, f"teacher={base}", "regression=-1"])


@pytest.mark.parametrize("stage", ["ode", "dmd"])
def test_resume_after_sigkill(world, tmp_path, stage):
    data, vae, base = world
    run = tmp_path / stage
    extra = []
    if stage == "dmd":
        ode = tmp_path / "ode_init"
        OdeDistiller(load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "pairs=2", "pair_batch=2",
                                            "steps=1"]), data, str(vae), ode).run()
        extra = ["--student", str(ode)]
    cmd = [sys.executable, "-m", "lpm.cli", "distill", stage, "--teacher", str(base), "--data", str(data),
           "--vae", str(vae), *extra, "--out", str(run), "--steps", "100000", *TRAIN_KEYS, "checkpoint_every=3",
           "batch=2", "pairs=2", "pair_batch=2"] if stage == "ode" else [
        sys.executable, "-m", "lpm.cli", "distill", stage, "--teacher", str(base), "--data", str(data),
        "--vae", str(vae), *extra, "--out", str(run), "--steps", "100000", *TRAIN_KEYS, "checkpoint_every=3",
        "batch=2", "generator_every=2"]
    kill_after_checkpoint(cmd, run / "train_state.pt", linger_s=0.5)
    ckpt_step = torch.load(run / "train_state.pt", weights_only=False)["step"]
    assert ckpt_step >= 3 and ckpt_step % 3 == 0
    end = ckpt_step + 2
    rerun_until(cmd, "100000", end, ckpt_step)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, end + 1))


# ---- two processes (gloo, FSDP2) == one process ----
WORLD = 2


def _dmd_losses(data: Path, vae: Path, base: Path, ode: Path, run: Path) -> list[float]:
    cfg = load_dmd_config(None, [*TRAIN_KEYS, f"teacher={base}", f"student={ode}", "batch=2", "generator_every=1",
                                 "lr=1e-3", "fake_lr=1e-3"])
    trainer = DmdDistiller(cfg, data, str(vae), run)
    trainer.setup()
    before = trainer.batch_loss(1)
    step = trainer.train_step(1)
    after = trainer.batch_loss(2)
    return [before, step["dmd_loss"], step["fake_loss"], after]


def _worker(rank: int, port: int, data: Path, vae: Path, base: Path, ode: Path, run: Path, out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    losses = _dmd_losses(data, vae, base, ode, run)
    close_group()
    if rank == 0:
        out.write_text(" ".join(repr(v) for v in losses))


def test_dmd_two_processes_match_single_process(world, tmp_path):
    data, vae, base = world
    ode = tmp_path / "ode"
    OdeDistiller(load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "pairs=2", "pair_batch=2", "steps=1"]),
                 data, str(vae), ode).run()
    single = _dmd_losses(data, vae, base, ode, tmp_path / "single")
    out = tmp_path / "dist.txt"
    mp.spawn(_worker, args=(free_port(), data, vae, base, ode, tmp_path / "dist", out), nprocs=WORLD)
    dist = [float(v) for v in out.read_text().split()]
    assert all(abs(d - s) <= 1e-4 * max(abs(s), 1e-3) for d, s in zip(dist[:3], single[:3])), (dist, single)
    assert abs(dist[3] - single[3]) <= 1e-3 * abs(single[3]), (dist, single)



def test_ode_stage_with_another_speech_network_takes_its_track_layout(world, tmp_path):
    """``speech=``: the student takes the speech network's channels (here the caption-driven emo_* too) and
    weights; the teacher's track weights move to the new layout, the added channels start at zero."""
    from lpm.models.motion_track import save_speech, speech_network

    data, vae, base = world
    teacher = load_dit(base / "dit_ema.safetensors")
    channels = teacher.cfg.motion_channels
    assert "emo_sad" in channels  # the presets' track holds the text channels: make a teacher without one
    narrow = tuple(c for c in channels if c != "emo_sad")
    narrow_cfg = dataclasses.replace(teacher.cfg, motion_channels=narrow)
    from lpm.config import to_dict
    from lpm.models.dit import DiT
    from lpm.models.motion_track import widen_track
    from lpm.training.checkpoint import read_metadata, save_checkpoint

    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("speech_motion.")}
    keep = [channels.index(c) for c in narrow]
    state["motion_embed.mlp.0.weight"] = state["motion_embed.mlp.0.weight"][:, keep]
    state["motion_map"] = state["motion_map"][:, keep]
    small = DiT(narrow_cfg)
    small.load_state_dict({**small.state_dict(), **state})
    meta = read_metadata(base / "dit_ema.safetensors")
    save_checkpoint(tmp_path / "narrow.safetensors", small.state_dict(), to_dict(narrow_cfg), "dit", meta["extra"])
    torch.manual_seed(5)
    speech = speech_network(teacher.cfg)
    speech_path = save_speech(tmp_path / "speech.safetensors", speech, teacher.cfg, {})
    with pytest.raises(ConfigError, match="target=data"):
        load_ode_config(None, [*TRAIN_KEYS, f"teacher={tmp_path / 'narrow.safetensors'}", f"speech={speech_path}"])
    cfg = load_ode_config(None, [*TRAIN_KEYS, f"teacher={tmp_path / 'narrow.safetensors'}", "target=data",
                                 f"speech={speech_path}", "steps=2", "batch=2", "checkpoint_every=2",
                                 "predicted_channels=[jaw_open]"])
    OdeDistiller(cfg, data, str(vae), tmp_path / "ode").run()
    student = load_dit(tmp_path / "ode" / "dit.safetensors")
    assert student.cfg.motion_channels == channels
    assert all(torch.equal(v, student.speech_motion.state_dict()[k]) for k, v in speech.state_dict().items())
    wide = widen_track(small.state_dict(), narrow, channels)["motion_embed.mlp.0.weight"]
    assert wide[:, channels.index("emo_sad")].abs().sum() == 0 and wide.shape[1] == len(channels)
