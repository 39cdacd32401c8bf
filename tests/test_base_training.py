"""``lpm train base`` on a 3-clip data set with a random tiny VAE and a micro DiT: latent cache, batches,
overfitting, outputs, and resume after SIGKILL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from base_fixtures import MICRO, RES, make_dataset, make_vae
from killing import kill_after_checkpoint, rerun_until
from lpm.config import ConfigError
from lpm.diffusion import Batch, FlowConfig, FlowMatching
from lpm.models import load_dit
from lpm.models.latent_codec import load_codec
from lpm.training import latent_cache
from lpm.training.base_trainer import BaseTrainer, load_base_config
from lpm.training.conditioned import ConditionedDiT


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("base")
    return make_dataset(root / "data"), make_vae(root / "vae.safetensors")


def test_latent_cache_round_trip(world, tmp_path, monkeypatch):
    data, vae = world
    codec = load_codec(vae)
    mel = load_base_config("tiny", None, MICRO).model.mel
    clips = latent_cache.load_latent_cache(data, "train", codec, str(vae), mel, tmp_path)
    assert [c.id for c in clips] == ["c0", "c1"]
    c = clips[0]
    assert c.latents.shape == (12, 4, RES // 8, RES // 8) and c.latents.dtype == torch.float16
    assert c.mel.shape == (2, 12, mel.steps_per_frame, mel.n_mels)
    assert c.pose.shape == (12, 4) and set(c.references) == {"global", "body_front", "expr_neutral"}
    assert 0 < c.coverage.max() <= 1 and c.mode == "speak" and c.caption == "clip number 0"
    # The mouth-only map lies inside the mouth-and-eyes map and covers less; the full motion is kept.
    assert 0 < c.mouth.max() and (c.mouth.float() <= c.coverage.float() + 1e-3).all()
    assert c.mouth.float().sum() < c.coverage.float().sum()
    assert c.motion.shape == (12, 18) and torch.allclose(c.motion[:, 0], torch.linspace(0, 1, 12))
    from lpm.data.clip import read_clip

    video = read_clip(data / "c0").video
    assert torch.allclose(c.latents.float(), codec.encode(video[None])[0], atol=1e-2)  # fp16 storage
    # Partner channel is silent in the fixture: its mel is the log floor everywhere.
    assert torch.allclose(c.mel[1], torch.full_like(c.mel[1], latent_cache.silent_mel(mel)))

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cached clip was encoded again")

    monkeypatch.setattr(latent_cache, "encode_clip", no_encoding)
    again = latent_cache.load_latent_cache(data, "train", codec, str(vae), mel, tmp_path)
    assert torch.equal(again[1].latents, clips[1].latents) and torch.equal(again[1].mel, clips[1].mel)


def _trainer(world, run: Path, extra=()) -> BaseTrainer:
    data, vae = world
    cfg = load_base_config("tiny", None, [*MICRO, f"cache_dir={run.parent / 'cache'}", *extra])
    trainer = BaseTrainer(cfg, data, str(vae), run)
    trainer.setup()
    return trainer


def test_batches_are_a_function_of_step(world, tmp_path):
    trainer = _trainer(world, tmp_path / "run", ["dropout.text=0.5", "dropout.audio_self=0.5"])
    a, b = trainer.global_batch(3), trainer.global_batch(3)
    assert torch.equal(a.x_0, b.x_0) and torch.equal(a.noise, b.noise) and a.cond.captions == b.cond.captions
    assert not torch.equal(a.x_0, trainer.global_batch(4).x_0)
    assert a.x_0.shape == (4, 4, 4, 8, 8) and a.weights.shape == (4, 4, 8, 8) and a.weights.max() > 1
    fa = a.cond.mel_self.shape[1]
    assert fa == 4 - a.cond.audio_start_frame + trainer.dit_cfg.audio_lookahead_frames
    dropped = [i for i, c in enumerate(a.cond.captions) if c == ""]
    drops = [trainer.global_batch(s).cond.captions.count("") for s in range(40)]
    assert 0 < sum(drops) < 160 and dropped is not None  # text is dropped per sample, sometimes


def test_overfits_one_batch(world, tmp_path):
    trainer = _trainer(world, tmp_path / "run")
    torch.manual_seed(0)
    batch = trainer.local_batch(1)
    flow = FlowMatching(FlowConfig(parametrisation="velocity"))
    fixed = Batch(batch.x_0, batch.cond, batch.weights, torch.full((4,), 0.7), batch.noise)
    opt = torch.optim.Adam(trainer.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = flow.loss(trainer.model, fixed)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::8]


def test_train_writes_outputs(world, tmp_path):
    data, vae = world
    run = tmp_path / "run"
    cfg = load_base_config("tiny", None, [*MICRO, "steps=4", "checkpoint_every=2", "sample_every=4",
                                          "sample_steps=2", "sampler=heun"])
    result = BaseTrainer(cfg, data, str(vae), run).run()
    assert result["step"] == 4 and result["loss"] > 0
    for name in ("config.json", "dit_config.json", "log.jsonl", "loss.png", "dit.safetensors",
                 "dit_ema.safetensors", "train_state.pt", "samples/step_000004.mp4"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and {"loss", "lr", "grad_norm", "s_per_step"} <= set(rows[0])
    model = load_dit(run / "dit_ema.safetensors")
    assert model.cfg.latent_channels == 4 and model.cfg.num_blocks == 2
    from lpm.data.video import read_mp4

    assert read_mp4(run / "samples/step_000004.mp4").shape == (4, RES, 2 * RES, 3)  # generated | truth
    # The trained weights are the checkpoint's: the wrapper reproduces them.
    assert set(ConditionedDiT(model).state_dict()) == set(torch.load(run / "train_state.pt",
                                                                     weights_only=False)["model"])


def test_resume_after_sigkill(world, tmp_path):
    data, vae = world
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lpm.cli", "train", "base", "--data", str(data), "--vae", str(vae),
           "--out", str(run), "--steps", "100000", *MICRO, "checkpoint_every=5"]
    kill_after_checkpoint(cmd, run / "train_state.pt", linger_s=0.5)
    ckpt_step = torch.load(run / "train_state.pt", weights_only=False)["step"]
    assert ckpt_step >= 5 and ckpt_step % 5 == 0
    end = ckpt_step + 3
    stdout = rerun_until(cmd, "100000", end, ckpt_step)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, end + 1))  # one row per step: rows past the checkpoint were redone once
    assert json.loads(stdout[stdout.index("{"):])["step"] == end


def test_init_starts_from_given_weights(world, tmp_path):
    first = _trainer(world, tmp_path / "a", ["seed=1"])
    first._checkpoint()
    given = load_dit(tmp_path / "a" / "dit_ema.safetensors").state_dict()
    tuned = _trainer(world, tmp_path / "b", ["seed=2", f"init={tmp_path / 'a'}"])
    mine = tuned.model.dit.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in given.items())
    assert tuned.step == 0  # a fresh schedule and optimizer
    fresh = _trainer(world, tmp_path / "c", ["seed=2"]).model.dit.state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in given.items())
    with pytest.raises(ConfigError, match="another shape.*dim"):
        _trainer(world, tmp_path / "d", [f"init={tmp_path / 'a'}", "model.dim=64"])


def test_max_minutes_stops_with_a_checkpoint(world, tmp_path):
    data, vae = world
    run = tmp_path / "run"
    cfg = load_base_config("tiny", None, [*MICRO, "steps=100000", "max_minutes=0.0001", "checkpoint_every=1000"])
    result = BaseTrainer(cfg, data, str(vae), run).run()
    assert 1 <= result["step"] < 100000
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == result["step"]
    again = BaseTrainer(load_base_config("tiny", None, [*MICRO, "steps=100000", "max_minutes=0.0001"]),
                        data, str(vae), run).run()
    assert again["step"] > result["step"]  # a rerun continues


def test_audio_gain_measures_reliance_on_own_voice(world, tmp_path):
    trainer = _trainer(world, tmp_path / "run")
    torch.manual_seed(0)
    with torch.no_grad():  # the head starts at zero (the output ignores every input): give it weights
        torch.nn.init.normal_(trainer.model.dit.head.linear.weight, std=0.5)
    trainer.audio_gain()
    batch = trainer._audio_batch  # the fixture's voices are steady tones: give each window its own
    batch.cond.mel_self = torch.randn(batch.cond.mel_self.shape, generator=torch.Generator().manual_seed(0)) * 3
    gain = trainer.audio_gain()
    assert gain == trainer.audio_gain() and 0 < abs(gain) < 1.0  # fixed batch, times and noise
    voices = batch.cond.mel_self
    batch.cond.mel_self = voices[:1].expand_as(voices).clone()  # one voice for all: shuffling changes nothing
    assert trainer.audio_gain() == 0.0
    batch.cond.mel_self = voices
    with torch.no_grad():  # a model that cannot hear: no gain either
        for block in trainer.model.dit.blocks:
            block.cross_attn.audio_v.weight.zero_()
            block.cross_attn.audio_v.bias.zero_()
    assert trainer.audio_gain() == 0.0


def test_audio_gain_is_logged(world, tmp_path):
    data, vae = world
    run = tmp_path / "run"
    cfg = load_base_config("tiny", None, [*MICRO, "steps=4", "audio_check_every=2", "checkpoint_every=4"])
    BaseTrainer(cfg, data, str(vae), run).run()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [("audio_gain" in r) for r in rows] == [False, True, False, True]
