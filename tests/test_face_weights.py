"""Loss-weight maps: the expression regions (brows, cheeks) cover what the emotions change, and the weights add up."""

import numpy as np
import pytest
import torch

from lpm.config import ConfigError
from lpm.training.base_trainer import BaseTrainConfig
from lpm.training.face_weights import EXPRESSION_FEATURES, FACE_FEATURES, face_coverage, loss_weights
from lpm.world.identity import TRAIN_STYLES, sample_identity
from lpm.world.motion import MOTION_INDEX, MOTION_NAMES, NUM_MOTION
from lpm.world.render import Renderer

RES = 128


def pose(**channels) -> np.ndarray:
    p = np.zeros(NUM_MOTION, np.float32)
    for name, value in channels.items():
        p[MOTION_INDEX[name]] = value
    return p


def union(boxes, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("style", TRAIN_STYLES)
def test_brow_boxes_hold_what_a_brow_raise_changes(style):
    r = Renderer(sample_identity(3, style), RES)
    low, high = pose(brow_raise=-1.0), pose(brow_raise=1.0)
    a, b = (r.face_regions(low), r.render(low)), (r.face_regions(high), r.render(high))
    changed = np.abs(a[1].astype(np.float32) - b[1].astype(np.float32)).mean(-1) > 20  # (H, W)
    assert changed.sum() > 10, style
    brows = [reg[k] for reg in (a[0], b[0]) for k in ("brow_l", "brow_r")]
    assert changed[union(brows, changed.shape)].sum() >= 0.8 * changed.sum(), style
    # The raised brow's box sits higher (smaller y) than the frowning one's.
    assert b[0]["brow_l"][1] < a[0]["brow_l"][1], style


def test_cheek_boxes_hold_the_angry_flush():
    r = Renderer(sample_identity(2, "photo"), RES)
    calm, angry = r.render(pose()), r.render(pose(emo_angry=1.0))
    regions = r.face_regions(pose(emo_angry=1.0))
    d = angry.astype(int) - calm.astype(int)
    red = d[..., 0] - d[..., 1]
    flushed = red > 15  # redder than before: the cheek decal's colour
    cheeks = union([regions["cheek_l"], regions["cheek_r"]], flushed.shape)
    assert flushed[cheeks].sum() > 10 and flushed[cheeks].mean() > 5 * max(flushed[~cheeks].mean(), 1e-3)


def test_expression_coverage_is_a_separate_map_in_range():
    ident = sample_identity(5, "anime")
    motion = torch.from_numpy(np.stack([pose(), pose(brow_raise=1.0, emo_happy=1.0)]))
    meta = {"identity": {"seed": 5}}
    face, mouth, expr = face_coverage(meta, ident.style, motion, MOTION_NAMES, RES, RES, 8,
                                      (FACE_FEATURES, ("mouth",), EXPRESSION_FEATURES))
    assert expr.shape == (2, RES // 8, RES // 8)
    assert 0 <= float(expr.min()) and float(expr.max()) <= 1 and float(expr[0].sum()) > 0.5
    assert not torch.equal(expr[0], expr[1])  # the brows moved
    assert torch.equal(face, face_coverage(meta, ident.style, motion, MOTION_NAMES, RES, RES, 8)[0])


def test_loss_weights_add_each_map_with_its_weight():
    cov = torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])
    mouth = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    expr = torch.tensor([[[0.0, 0.0], [0.0, 0.25]]])
    w = loss_weights(cov, 4.0, (1, 2, 2), mouth, 20.0, expr, 8.0)
    assert torch.allclose(w, torch.tensor([[[1.0, 25.0], [3.0, 3.0]]]))
    assert torch.equal(loss_weights(cov, 4.0, (1, 2, 2), mouth, 20.0), loss_weights(cov, 4.0, (1, 2, 2), mouth, 20.0,
                                                                                    expr, 0.0))
    assert torch.equal(loss_weights(None, 4.0, (1, 2, 2)), torch.ones(1, 2, 2))


def test_negative_weights_are_refused():
    with pytest.raises(ConfigError, match="expression_weight must be >= 0"):
        BaseTrainConfig(expression_weight=-1.0)
