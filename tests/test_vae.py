"""The VAE and the latent codec interface: shapes, chunked == full, checkpoints, the diffusers adapter."""

import sys
import types

import pytest
import torch

from lpm.errors import LpmError
from lpm.models.latent_codec import DiffusersVAEAdapter, LatentCodec, load_codec, time_codec
from lpm.models.vae import LpmVAE, VAEConfig

TINY = VAEConfig(latent_channels=4, channels=(8, 16, 16), norm_groups=4)


def _tiny_vae(seed: int = 0) -> LpmVAE:
    torch.manual_seed(seed)
    vae = LpmVAE(TINY).eval()
    # Non-trivial weights everywhere (the last conv of each block starts at zero) and latent statistics.
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        vae.latent_shift.copy_(torch.randn(4) * 0.1)
        vae.latent_scale.copy_(torch.rand(4) + 0.5)
    return vae


def test_shapes_and_range():
    vae = _tiny_vae()
    assert isinstance(vae, LatentCodec) and vae.downsample == 8 and vae.latent_channels == 4
    video = torch.rand(2, 3, 3, 32, 48) * 2 - 1  # (B, F, 3, H, W)
    z = vae.encode(video)
    assert z.shape == (2, 3, 4, 4, 6)
    x = vae.decode(z)
    assert x.shape == video.shape and x.min() >= -1 and x.max() <= 1
    assert vae.encode_images(video[:, 0]).shape == (2, 4, 4, 6)


def test_chunked_decode_equals_full_decode():
    vae = _tiny_vae()
    latents = torch.randn(2, 7, 4, 4, 4)
    with torch.no_grad():
        full = vae.decode(latents)
        state, parts = None, []
        for chunk in latents.split([3, 1, 3], dim=1):  # uneven chunks, as a stream may deliver them
            out, state = vae.decode_chunk(chunk, state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_chunked_encode_equals_full_encode():
    vae = _tiny_vae()
    video = torch.rand(1, 6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        full = vae.encode(video)
        parts = torch.cat([vae.encode(c) for c in video.split(2, dim=1)], dim=1)
    torch.testing.assert_close(parts, full, atol=1e-5, rtol=0)


def test_latent_normalisation_round_trip():
    vae = _tiny_vae()
    raw = torch.randn(10, 4, 4, 4) * torch.tensor([1.0, 2.0, 3.0, 0.5]).view(1, 4, 1, 1) + 3
    vae.set_latent_stats(raw)
    normed = (raw - vae.latent_shift.view(1, 4, 1, 1)) / vae.latent_scale.view(1, 4, 1, 1)
    assert normed.mean().abs() < 1e-4 and (normed.transpose(0, 1).flatten(1).std(1) - 1).abs().max() < 1e-4


def test_checkpoint_round_trip_and_load_codec(tmp_path):
    vae = _tiny_vae()
    path = vae.save(tmp_path / "vae.safetensors", extra={"step": 3})
    for spec in (path, tmp_path):  # the file, or the run folder holding it
        codec = load_codec(spec)
        assert isinstance(codec, LpmVAE) and codec.cfg == TINY
        torch.testing.assert_close(codec.latent_scale, vae.latent_scale)
        z = torch.randn(1, 2, 4, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(codec.decode(z), vae.decode(z))
    with pytest.raises(LpmError, match="no VAE checkpoint"):
        load_codec(tmp_path / "missing")


def test_strict_load_names_mismatch(tmp_path):
    path = _tiny_vae().save(tmp_path / "vae.safetensors")
    from lpm.training.checkpoint import load_checkpoint, load_into

    state, _ = load_checkpoint(path, kind="vae")
    with pytest.raises(LpmError, match="shape mismatches"):
        load_into(LpmVAE(VAEConfig(latent_channels=8, channels=(8, 16, 16), norm_groups=4)), state)


def test_time_codec_reports_ms_per_frame():
    out = time_codec(_tiny_vae(), 32, 32, frames=2, budget_s=0.05, max_iters=2)
    assert set(out) == {"decode_fp32", "encode_fp32"} and all(v > 0 for v in out.values())


# The diffusers adapter, with a stand-in shaped like diffusers.AutoencoderKL (diffusers is not installed)
class _FakeDist:
    def __init__(self, mean):
        self.mean = mean

    def sample(self):
        return self.mean + torch.randn_like(self.mean)


class FakeAutoencoderKL(torch.nn.Module):
    """AutoencoderKL's surface: config, encode(x).latent_dist.mean, decode(z).sample; 4 ch, 8x (4 blocks)."""

    loaded_from: list = []

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                            scaling_factor=0.5, shift_factor=None)

    @classmethod
    def from_pretrained(cls, folder, local_files_only=False, torch_dtype=None):
        cls.loaded_from.append((folder, local_files_only))
        return cls()

    def encode(self, x):  # latents = 8x8-average of the first channel, repeated: a checkable linear map
        m = torch.nn.functional.avg_pool2d(x, 8)[:, :1].repeat(1, 4, 1, 1)
        return types.SimpleNamespace(latent_dist=_FakeDist(m))

    def decode(self, z):
        x = torch.nn.functional.interpolate(z[:, :3], scale_factor=8, mode="nearest")
        return types.SimpleNamespace(sample=x)


def test_diffusers_adapter_scaling_and_shapes():
    codec = DiffusersVAEAdapter(model=FakeAutoencoderKL(), frames_per_batch=3)
    assert codec.latent_channels == 4 and codec.downsample == 8
    video = torch.full((2, 5, 3, 16, 16), 0.4)
    z = codec.encode(video)
    assert z.shape == (2, 5, 4, 2, 2)
    torch.testing.assert_close(z, torch.full_like(z, 0.4 * 0.5))  # mean * scaling_factor
    x = codec.decode(z)
    assert x.shape == video.shape
    torch.testing.assert_close(x, video)  # decode divides the scaling factor back out
    chunk, state = codec.decode_chunk(z[:, :2])
    assert state is None and torch.equal(chunk, x[:, :2])


def test_diffusers_adapter_loads_lazily_from_local_folder(tmp_path, monkeypatch):
    fake = types.ModuleType("diffusers")
    fake.AutoencoderKL = FakeAutoencoderKL
    monkeypatch.setitem(sys.modules, "diffusers", fake)
    FakeAutoencoderKL.loaded_from = []
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    codec = load_codec(f"diffusers:{tmp_path}")
    assert codec.latent_channels == 4 and codec.downsample == 8  # from config.json alone
    assert FakeAutoencoderKL.loaded_from == []  # nothing loaded until first use
    assert codec.encode(torch.zeros(1, 1, 3, 16, 16)).shape == (1, 1, 4, 2, 2)
    assert FakeAutoencoderKL.loaded_from == [(str(tmp_path / "vae"), True)]  # pipeline folder -> its vae/


def test_diffusers_adapter_errors(tmp_path, monkeypatch):
    with pytest.raises(LpmError, match="does not exist"):
        load_codec(f"diffusers:{tmp_path / 'nope'}")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    codec = load_codec(f"diffusers:{tmp_path}")
    with pytest.raises(LpmError, match="pip install diffusers"):
        codec.decode(torch.zeros(1, 1, 4, 2, 2))
