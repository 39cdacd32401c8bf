"""The diffusers AutoencoderKLWan adapter (t_down 4) on a small random-config instance: no weights here."""

from __future__ import annotations

import json

import pytest
import torch

from lpm.errors import LpmError
from lpm.models.latent_codec import WanVAEAdapter, load_codec

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install '.[scale]')")
if not hasattr(diffusers, "AutoencoderKLWan"):
    pytest.skip(f"diffusers {diffusers.__version__} has no AutoencoderKLWan", allow_module_level=True)

MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                                       temperal_downsample=[True, True], latents_mean=MEAN, latents_std=STD,
                                       scale_factor_spatial=4)
    folder = tmp_path_factory.mktemp("wan") / "pipeline"
    model.save_pretrained(folder / "vae")  # a pipeline folder: the adapter finds its vae/
    return folder, model.eval()


def frames(n: int) -> torch.Tensor:
    return torch.rand(1, n, 3, 16, 16, generator=torch.Generator().manual_seed(n)) * 2 - 1


@torch.no_grad()
def test_load_codec_picks_the_wan_adapter_and_maps_its_clock(wan_folder):
    folder, model = wan_folder
    codec = load_codec(f"diffusers:{folder}")
    assert isinstance(codec, WanVAEAdapter)
    assert (codec.t_down, codec.downsample, codec.latent_channels) == (4, 4, 4)
    video = frames(12)
    z = codec.encode(video)
    assert z.shape == (1, 3, 4, 4, 4)
    # Wan's own encode of frames 3..11 (1 + 4 * 2), normalised by the config's latents_mean / latents_std.
    mean = model.encode(video[:, 3:].transpose(1, 2)).latent_dist.mean.transpose(1, 2)
    expect = (mean - torch.tensor(MEAN).view(1, 1, -1, 1, 1)) / torch.tensor(STD).view(1, 1, -1, 1, 1)
    torch.testing.assert_close(z, expect)
    x = codec.decode(z)
    assert x.shape == (1, 12, 3, 16, 16)
    wan = model.decode((z * torch.tensor(STD).view(1, 1, -1, 1, 1) + torch.tensor(MEAN).view(1, 1, -1, 1, 1))
                       .transpose(1, 2)).sample.transpose(1, 2)
    torch.testing.assert_close(x[:, 3:], wan)  # every frame from 3 on is Wan's own
    assert torch.equal(x[:, 0], x[:, 3]) and torch.equal(x[:, 2], x[:, 3])  # its first frame held over 0..2
    with pytest.raises(LpmError, match="multiple of the codec's t_down 4"):
        codec.encode(frames(10))


@torch.no_grad()
@pytest.mark.parametrize("split", [(1, 1, 1, 1), (2, 2), (1, 3)])
def test_streamed_decode_equals_full_decode(wan_folder, split):
    codec = load_codec(f"diffusers:{wan_folder[0]}")
    z = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    full = codec.decode(z)
    parts, state, i = [], None, 0
    for n in split:
        out, state = codec.decode_chunk(z[:, i:i + n], state)
        assert out.shape[1] == 4 * n
        parts.append(out)
        i += n
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 4,
                                                      "latents_mean": [0.0], "latents_std": [1.0]}))
    with pytest.raises(LpmError, match="latents_mean / latents_std must list 4 values"):
        load_codec(f"diffusers:{tmp_path}")
