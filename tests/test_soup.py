"""``lpm.models.soup.interpolate_dits``: weights between two checkpoints of one network, the second's metadata kept,
mismatched networks refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.errors import LpmError
from lpm.models.dit import load_dit, save_dit
from lpm.models.restorer import Restorer, RestorerConfig
from lpm.models.soup import interpolate_dits
from lpm.training.checkpoint import read_metadata
from test_dit import make_model, micro

CHANNELS = ("jaw_open", "emo_happy")


def test_interpolated_weights_and_the_second_checkpoints_settings(tmp_path):
    cfg = micro(reference_residual=True, motion_channels=CHANNELS)
    first = save_dit(tmp_path / "a.safetensors", make_model(cfg), extra={"step": 1})
    torch.manual_seed(1)
    second_model = make_model(dataclasses.replace(cfg, expression_canvas=True, expression_blend=True))
    with torch.no_grad():
        for p in second_model.parameters():
            p.add_(torch.randn_like(p))
    Restorer(RestorerConfig(resolution=64, channels=(8, 16), blocks=1, norm_groups=4)).save(tmp_path / "b" /
                                                                                           "r.safetensors")
    second = save_dit(tmp_path / "b" / "b.safetensors", second_model,
                      extra={"step": 2, "online": {"timesteps": [1.0, 0.0], "restorer": "r.safetensors"}})
    out = interpolate_dits(first, second, 0.25, tmp_path / "out" / "c.safetensors")
    a, b, c = (load_dit(p).state_dict() for p in (first, second, out))
    for name in c:
        if c[name].is_floating_point():
            torch.testing.assert_close(c[name], 0.75 * a[name] + 0.25 * b[name])
    meta = read_metadata(out)
    assert meta["config"]["expression_blend"] is True and meta["extra"]["step"] == 2  # the second's
    assert meta["extra"]["online"]["restorer"] == "../b/r.safetensors"  # still names the second's restorer
    assert meta["extra"]["export"]["soup"]["alpha"] == 0.25
    assert torch.equal(load_dit(interpolate_dits(first, second, 1.0, tmp_path / "d.safetensors")).state_dict()
                       ["head.linear.weight"], b["head.linear.weight"])
    other = save_dit(tmp_path / "o.safetensors", make_model(dataclasses.replace(cfg, dim=cfg.dim * 2)))
    with pytest.raises(LpmError, match="config differs in"):
        interpolate_dits(first, other, 0.5, tmp_path / "x.safetensors")
    with pytest.raises(LpmError, match=r"alpha must be in \[0, 1\]"):
        interpolate_dits(first, second, 1.5, tmp_path / "x.safetensors")
