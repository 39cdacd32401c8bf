"""``lpm train vae`` end to end on a tiny data set: outputs, resume after SIGKILL, losses and metrics."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from killing import kill_after_checkpoint, rerun_until
from lpm.data.clip import write_clip
from lpm.models.latent_codec import load_codec
from lpm.training.vae_trainer import VAETrainConfig, VAETrainer, load_train_config, psnr_uint8, ssim

RES, FRAMES = 32, 8
TINY = ["model.channels=[8,16,16]", "model.latent_channels=4", "model.norm_groups=4", "batch=4",
        "log_every=2", "stats_frames=8", "eval_frames_per_clip=4", "threads=1"]


def _shapes_clip(rng: np.random.Generator) -> np.ndarray:
    """(F, RES, RES, 3) uint8: a coloured rectangle and disc moving over a flat background."""
    frames = np.empty((FRAMES, RES, RES, 3), np.uint8)
    bg, c1, c2 = rng.integers(0, 256, (3, 3))
    yy, xx = np.mgrid[:RES, :RES]
    for f in range(FRAMES):
        img = np.broadcast_to(bg, (RES, RES, 3)).copy()
        x0 = 4 + f
        img[6:16, x0:x0 + 10] = c1
        img[(yy - 22) ** 2 + (xx - 12 - f) ** 2 < 36] = c2
        frames[f] = img
    return frames


def make_dataset(root: Path, splits=("train", "train", "val", "zeroshot")) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(splits):
        frames = _shapes_clip(rng)
        audio = np.zeros((2, round(FRAMES * 16000 / 24)), np.float32)
        meta = {"id": f"c{i}", "split": split, "style": "toy", "caption": "shapes",
                "states": ["idle"] * FRAMES, "events": []}
        refs = {"global": frames[0], "expr_neutral": frames[1]}
        rows.append(write_clip(root / f"c{i}", frames, audio, refs, meta))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_train_writes_outputs_and_reconstructs(tmp_path):
    data = make_dataset(tmp_path / "data")
    cfg = load_train_config(None, TINY + ["steps=6", "sample_every=3", "checkpoint_every=3", "lr=3e-3"])
    run = tmp_path / "run"
    result = VAETrainer(cfg, data, run).run()
    for name in ("config.json", "log.jsonl", "vae.safetensors", "train_state.pt", "eval.json", "loss.png",
                 "samples/step_000003.png", "samples/step_000006.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["channels"] == [8, 16, 16]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert {"loss", "l1", "ssim_loss", "kl", "psnr", "lr", "s_per_step"} <= set(rows[0])
    assert set(result["psnr_db"]) == {"train", "val", "zeroshot"}
    assert result["frames"]["val"] == 4
    assert {"decode_fp32", "decode_bf16", "encode_fp32"} == set(result["ms_per_frame"])
    assert json.loads((run / "eval.json").read_text())["psnr_db"] == result["psnr_db"]
    # Samples: originals over reconstructions, sample_images wide.
    from PIL import Image

    # The val split holds 4 evaluated frames, fewer than sample_images (8): all 4 are shown.
    assert Image.open(run / "samples/step_000006.png").size == (RES * 4, RES * 2)
    codec = load_codec(run)
    z = codec.encode(torch.zeros(1, 2, 3, RES, RES))
    assert z.shape == (1, 2, 4, 4, 4)


def test_loss_drops_with_training(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train", "val"))
    cfg = load_train_config(None, TINY + ["steps=60", "lr=5e-3", "warmup_steps=5", "log_every=10",
                                          "sample_every=1000", "checkpoint_every=1000"])
    VAETrainer(cfg, data, tmp_path / "run").run()
    rows = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert rows[-1]["l1"] < 0.6 * rows[0]["l1"]


def test_latent_stats_are_normalised(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train",))
    cfg = load_train_config(None, TINY + ["steps=4", "stats_frames=16"])
    trainer = VAETrainer(cfg, data, tmp_path / "run")
    trainer.run()
    with torch.no_grad():
        video = torch.from_numpy(trainer.frames[:16]).permute(0, 3, 1, 2)[None].float() / 127.5 - 1
        z = trainer.vae.encode(video)  # (1, 16, C, h, w)
    per_channel = z[0].transpose(0, 1).flatten(1)  # (C, N*h*w)
    assert per_channel.mean(1).abs().max() < 1e-3 and (per_channel.std(1) - 1).abs().max() < 1e-3


def test_resume_after_sigkill(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train", "val"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lpm.cli", "train", "vae", "--data", str(data), "--out", str(run),
           "--steps", "100000", *TINY, "checkpoint_every=10", "sample_every=1000"]
    kill_after_checkpoint(cmd, run / "train_state.pt", linger_s=0.3)
    state = torch.load(run / "train_state.pt", weights_only=False)
    ckpt_step = state["step"]
    assert ckpt_step >= 10 and ckpt_step % 10 == 0
    # Rerun the same command with a reachable end: it continues from the checkpoint, not from step 0.
    end = ckpt_step + 4
    rerun_until(cmd, "100000", end, ckpt_step)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(2, end + 1, 2))  # one row per step: rows past the checkpoint were redone once
    assert json.loads((run / "eval.json").read_text())["step"] == end


def test_ssim_and_psnr():
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert abs(ssim(x, x).item() - 1) < 1e-5 and ssim(x, -x).item() < 0.5
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a + 1
    assert abs(psnr_uint8(a, b)[0] - 20 * np.log10(255)) < 1e-9


def test_config_fields_are_commented():
    # Every VAETrainConfig field carries a comment (checked at the source, the one place they are documented).
    import inspect

    from lpm.training import vae_trainer

    src = inspect.getsource(vae_trainer.VAETrainConfig).splitlines()
    fields = list(VAETrainConfig.__dataclass_fields__)
    for name in fields:
        i = next(k for k, line in enumerate(src) if line.strip().startswith(f"{name}:"))
        j = i
        while src[j - 1].strip() and not src[j - 1].strip().startswith("#"):
            j -= 1  # fields grouped under one comment
        assert src[j - 1].strip().startswith("#"), name


@pytest.fixture(scope="module")
def world_data(tmp_path_factory) -> Path:
    """Three small world clips (two train, one val), made once for the tests that need face regions."""
    from lpm.world.synth import plan, synth

    root = tmp_path_factory.mktemp("world")
    # Conversations face the camera (other modes may turn the body away, with no visible features).
    specs = plan(2, seed=3, seconds=0.5, res=64, split="train", mode="conversation")
    specs += plan(1, seed=5, seconds=0.5, res=64, split="val", mode="conversation")
    synth(root, specs, workers=1, progress=False)
    return root


def test_face_masks_cover_mouth_and_eyes_of_world_frames(tmp_path, world_data):
    from lpm.training.vae_trainer import face_masks, load_frames

    data = world_data
    frames, _ = load_frames(data, "val", tmp_path / "cache", frames_per_clip=6)
    masks = face_masks(data, "val", tmp_path / "cache", frames_per_clip=6)
    assert masks.shape == frames.shape[:3] and masks.dtype == bool
    share = masks.mean(axis=(1, 2))
    # A few percent of the pixels: the features, not the head (empty where the head faces away).
    assert share.max() > 0.005 and (share < 0.2).all()
    # The masked pixels hold the face's detail: they differ more from the frame's median colour than the rest.
    dev = np.abs(frames.astype(float) - np.median(frames, axis=(1, 2), keepdims=True)).sum(-1)
    assert dev[masks].mean() > dev[~masks].mean()
    # Clips without motion (the toy set) get empty masks, one per frame.
    toy = make_dataset(tmp_path / "toy")
    assert not face_masks(toy, "val", tmp_path / "cache2", 4).any()


def test_psnr_masked_pools_only_masked_pixels():
    from lpm.training.vae_trainer import psnr_masked_uint8

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[:, :2] = 10  # error only in the top half
    top = np.zeros((2, 4, 4), bool)
    top[:, :2] = True
    assert abs(psnr_masked_uint8(a, b, top) - 10 * np.log10(255**2 / 100)) < 1e-9
    assert psnr_masked_uint8(a, b, ~top) == 100.0  # capped: no error there
    assert psnr_masked_uint8(a, b, np.zeros_like(top)) is None


def test_decoder_fine_tune_keeps_the_latent_space(tmp_path, world_data):
    from lpm.config import ConfigError

    data = world_data
    small = ["model.channels=[8,16,16]", "model.latent_channels=4", "model.norm_groups=4", "batch=4",
             "stats_frames=8", "eval_frames_per_clip=2", "threads=1", "sample_every=1000", "log_every=2"]
    first = VAETrainer(load_train_config(None, small + ["steps=4", "checkpoint_every=4"]), data, tmp_path / "a")
    first.run()
    init = tmp_path / "a/vae.safetensors"
    with pytest.raises(ConfigError, match="init"):
        load_train_config(None, ["train_encoder=false"])
    cfg = load_train_config(None, ["batch=4", "eval_frames_per_clip=2", "threads=1", "sample_every=1000",
                                   "checkpoint_every=3", "log_every=1", "steps=3", "lr=3e-3",
                                   f"init={init}", "train_encoder=false", "face_weight=20"])
    result = VAETrainer(cfg, data, tmp_path / "b").run()
    before = load_codec(init)
    after = load_codec(tmp_path / "b/vae.safetensors")
    for k, v in before.state_dict().items():
        same = torch.equal(v, after.state_dict()[k])
        assert same == (not k.startswith("decoder.")), k  # the encoder and latent stats are init's
    assert list(after.cfg.channels) == [8, 16, 16]  # the checkpoint's shape, not the default
    assert set(result["psnr_face_db"]) == {"val"}
    # A data set without face regions cannot be face-weighted: a clear error, not a silent uniform loss.
    toy = make_dataset(tmp_path / "toy")
    with pytest.raises(Exception, match="face_weight"):
        VAETrainer(cfg, toy, tmp_path / "c").run()


def test_style_prob_restyles_that_share_of_each_batch(tmp_path):
    from lpm.config import ConfigError

    data = make_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="style_prob"):
        load_train_config(None, ["style_prob=1.5"])

    def batch(prob: float, seed: int = 0) -> torch.Tensor:
        trainer = VAETrainer(load_train_config(None, TINY + [f"style_prob={prob}", f"seed={seed}", "batch=64",
                                                             "ref_fraction=0"]), data, tmp_path / "r")
        trainer.frames = np.stack([_shapes_clip(np.random.default_rng(i))[0] for i in range(4)])
        trainer.refs = trainer.frames[:0]
        return trainer._batch()[0]

    def grey(x: torch.Tensor) -> torch.Tensor:  # (B,) True where the three channels agree
        return ((x[:, 0] - x[:, 1]).abs().amax((-2, -1)) < 1e-6) & ((x[:, 1] - x[:, 2]).abs().amax((-2, -1)) < 1e-6)

    assert not grey(batch(0.0)).any()  # the toy clips are coloured
    assert grey(batch(1.0)).all()
    share = grey(batch(0.5)).float().mean().item()
    assert 0.25 < share < 0.75
    assert torch.equal(batch(0.5), batch(0.5))  # seeded: a resumed run draws the same restyles
    assert not torch.equal(batch(0.5, seed=0), batch(0.5, seed=1))
