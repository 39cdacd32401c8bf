"""3D RoPE: scores depend on relative positions only; axis split; coarse patch centres."""

from __future__ import annotations

import torch

from lpm.models.rope import Rope3D, apply_rope, axis_dims, grid_positions


def test_axis_split_matches_wan():
    assert axis_dims(128) == (44, 42, 42)
    assert sum(axis_dims(64)) == 64 and all(d % 2 == 0 for d in axis_dims(64))


def test_scores_depend_on_relative_position_only():
    rope = Rope3D(24)
    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(5, 24, generator=g, dtype=torch.float64),
        torch.randn(7, 24, generator=g, dtype=torch.float64),
    )
    pq = torch.rand(5, 3, generator=g, dtype=torch.float64) * 20
    pk = torch.rand(7, 3, generator=g, dtype=torch.float64) * 20 - 10
    shift = torch.tensor([1000.0, -3.0, 7.5], dtype=torch.float64)

    def scores(a, b):
        return apply_rope(q, *rope.cos_sin(a)) @ apply_rope(k, *rope.cos_sin(b)).T

    assert torch.allclose(scores(pq, pk), scores(pq + shift, pk + shift), atol=1e-9)
    assert not torch.allclose(scores(pq, pk), scores(pq + shift, pk), atol=1e-3)


def test_rotation_preserves_norm_and_dtype():
    rope = Rope3D(16)
    x = torch.randn(2, 3, 10, 16, dtype=torch.bfloat16)
    y = apply_rope(x, *rope.cos_sin(torch.rand(10, 3) * 50))
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=2e-2)


def test_coarse_patches_sit_at_fine_patch_centres():
    fine = grid_positions(torch.tensor([0.0]), 4, 4)
    coarse = grid_positions(torch.tensor([0.0]), 2, 2, stride=2.0)
    assert fine.shape == (16, 3) and coarse.shape == (4, 3)
    # the first coarse patch covers fine rows/cols 0..1: its centre is 0.5
    assert coarse[0].tolist() == [0.0, 0.5, 0.5] and coarse[-1].tolist() == [0.0, 2.5, 2.5]
