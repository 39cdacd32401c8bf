"""Parameter counts of every preset (built on the meta device) and the ``lpm model`` commands."""

from __future__ import annotations

import pytest

from lpm.cli import main
from lpm.models import PRESETS, DiT, preset
from lpm.models.commands import build_meta, parameter_counts

# (low, high) total parameters per preset
EXPECTED = {
    "tiny": (5e6, 15e6),
    "small": (40e6, 120e6),
    "base": (1.2e9, 1.8e9),  # Wan2.1-1.3B shape plus audio / reference / text parameters
    "lpm-17b": (16e9, 18e9),  # Wan2.1-14B shape plus LPM's additions
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    counts = parameter_counts(build_meta(preset(name)))
    low, high = EXPECTED[name]
    assert low <= counts["total"] <= high, f"{name}: {counts['total']:,}"
    assert all(v > 0 for v in counts.values())


def test_lpm_17b_has_the_wan14b_backbone():
    cfg = preset("lpm-17b")
    assert (cfg.dim, cfg.num_blocks, cfg.num_heads, cfg.ffn_dim) == (5120, 40, 40, 13824)
    counts = parameter_counts(build_meta(cfg))
    backbone = sum(v for k, v in counts.items() if k.startswith("blocks") and "audio" not in k)
    assert 13.5e9 < backbone < 14.5e9


def test_counts_cover_every_parameter():
    model = DiT(preset("tiny"))
    assert parameter_counts(model)["total"] == sum(p.numel() for p in model.parameters())


def test_model_info_command(capsys):
    assert main(["model", "info", "--preset", "lpm-17b"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "audio encoder" in out
