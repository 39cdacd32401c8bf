"""The causal video VAE (t_down 4 and 1) and the codec interface's temporal compression."""

from __future__ import annotations

import pytest
import torch

from lpm.errors import LpmError
from lpm.models.causal_vae import CausalVAE, CausalVAEConfig
from lpm.models.latent_codec import load_codec, time_codec


def tiny(t_down: int = 4, **kw) -> CausalVAE:
    torch.manual_seed(0)
    model = CausalVAE(CausalVAEConfig(latent_channels=4, t_down=t_down, channels=(8, 8), norm_groups=4, **kw))
    with torch.no_grad():  # the zero-initialised convs would hide the temporal paths from the tests
        for p in model.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def video(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_shapes_and_temporal_compression():
    model = tiny()
    assert model.t_down == 4 and model.downsample == 4 and model.cfg.reach == 4
    z = model.encode(video(12))
    assert z.shape == (2, 3, 4, 4, 4)
    x = model.decode(z)
    assert x.shape == (2, 12, 3, 16, 16) and x.abs().max() <= 1
    assert model.latent_frames(12) == 3 and model.encode_images(video(4)[:, 0]).shape == (2, 4, 4, 4)
    with pytest.raises(LpmError, match="multiple of the codec's t_down 4"):
        model.encode(video(10))


@torch.no_grad()
def test_encoder_and_decoder_are_causal():
    model = tiny()
    a, b = video(16), video(16, seed=1)
    b[:, :8] = a[:, :8]  # the same first two latent groups, a different future
    za, zb = model.encode(a), model.encode(b)
    torch.testing.assert_close(za[:, :2], zb[:, :2])
    assert (za[:, 2:] - zb[:, 2:]).abs().max() > 1e-4  # the future does change later latents
    za2 = za.clone()
    za2[:, 3] += 1
    xa, xa2 = model.decode(za), model.decode(za2)
    torch.testing.assert_close(xa[:, :12], xa2[:, :12])  # latent 3 only reaches frames 12..15
    # The temporal stack reaches back: latent 1 changes the frames of latent 2 as well as its own.
    za3 = za.clone()
    za3[:, 1] += 1
    assert (model.decode(za3)[:, 8:12] - xa[:, 8:12]).abs().max() > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("split", [(1, 1, 1, 1, 1, 1), (2, 3, 1), (4, 2), (6,)])
def test_streamed_decode_equals_full_decode(split):
    model = tiny()
    z = torch.randn(1, 6, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    full = model.decode(z)
    parts, state, i = [], None, 0
    for n in split:
        out, state = model.decode_chunk(z[:, i:i + n], state)
        assert out.shape[1] == n * 4 and state.shape[1] <= model.cfg.reach
        parts.append(out)
        i += n
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_t_down_1_is_a_per_frame_codec_of_the_same_family():
    model = tiny(t_down=1)
    z = model.encode(video(5))
    assert z.shape == (2, 5, 4, 4, 4) and model.decode(z).shape == (2, 5, 3, 16, 16)


def test_checkpoint_round_trip_through_load_codec(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.set_latent_stats(model.posterior(video(8))[0])
    path = model.save(tmp_path / "vae.safetensors")
    loaded = load_codec(tmp_path)
    assert isinstance(loaded, CausalVAE) and loaded.t_down == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(video(8)), model.encode(video(8)))
        z = model.encode(video(8))
        assert z.flatten(0, 1).transpose(0, 1).flatten(1).std(1).sub(1).abs().max() < 1e-4  # unit variance
    timings = time_codec(loaded, 16, 16, frames=8, budget_s=0.05, max_iters=2)
    assert set(timings) == {"decode_fp32", "encode_fp32"} and all(v > 0 for v in timings.values())
    with pytest.raises(LpmError, match="not a multiple"):
        time_codec(loaded, 16, 16, frames=6, budget_s=0.05, max_iters=2)
    assert str(path).endswith("vae.safetensors")


def test_load_codec_refuses_a_checkpoint_of_another_kind(tmp_path):
    from lpm.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "vae.safetensors", {"w": torch.zeros(1)}, {}, kind="dit")
    with pytest.raises(LpmError, match="'dit' checkpoint is not a VAE"):
        load_codec(tmp_path / "vae.safetensors")


def test_trainer_resumes_and_reports_streamed_psnr(tmp_path):
    from lpm.training.causal_vae_trainer import CausalVAETrainConfig, CausalVAETrainer
    from lpm.world.synth import plan, synth

    data = tmp_path / "data"
    synth(data, plan(clips=2, seed=2, seconds=0.5, res=64, split="train"), workers=1, progress=False)
    synth(data, plan(clips=1, seed=3, seconds=0.5, res=64, split="val"), workers=1, progress=False)
    model = CausalVAEConfig(latent_channels=4, t_down=4, channels=(8, 8), norm_groups=4)
    cfg = CausalVAETrainConfig(model=model, resolution=32, clips=2, val_clips=1, frames=8, batch=2, steps=2,
                               checkpoint_every=1, chunk_latents=1)
    first = CausalVAETrainer(cfg, data, tmp_path / "run").run()
    assert first["step"] == 2 and (tmp_path / "run" / "train_state.pt").is_file()
    cfg.steps = 3
    second = CausalVAETrainer(cfg, data, tmp_path / "run").run()  # resumes at step 2: one more step
    assert second["step"] == 3 and second["train_seconds_this_run"] < first["train_seconds_this_run"] + 60
    assert second["val_frames_per_clip"] == 12 and second["latent_frames_per_second"] == 6.0
    assert second["compression"] == 3 * 32 * 32 * 4 / (4 * 8 * 8) and 0 < second["val_psnr_db"] < 60
    codec = load_codec(tmp_path / "run")
    assert isinstance(codec, CausalVAE) and codec.t_down == 4
    with pytest.raises(LpmError, match="frames 6 is not a multiple of model.t_down 4"):
        CausalVAETrainer(CausalVAETrainConfig(model=model, frames=6), data, tmp_path / "bad")
