"""``interpolate_dits``: a DiT whose weights lie between two fine-tunes of one parent (WiSE-FT).

Fine-tuning on the seen styles moves a model away from what it drew on styles it never saw (every DMD continuation
of the shipped Online model raised the zero-shot world-FID by 20-40, docs/learning.md). Wortsman et al. (2022,
"Robust fine-tuning of zero-shot models") found that averaging the fine-tuned weights with the weights it started
from keeps most of the gain on the training distribution and much of the robustness off it. Both checkpoints must
have the same tensors (names and shapes); the result takes ``alpha`` of the second and ``1 - alpha`` of the first,
and the second's config and metadata (its sampling settings, restorer, canvas), with ``extra["export"]["soup"]``
recording the two sources and ``alpha``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lpm.errors import LpmError
from lpm.models.dit import CHECKPOINT_KIND
from lpm.models.export import with_restorer
from lpm.training.checkpoint import load_checkpoint, save_checkpoint

# Config fields that change how weights are used, not which weights exist: two checkpoints may differ in them
# (the second's are kept): the expression canvas adds no weights.
FREE_FIELDS = ("expression_canvas", "expression_blend")


def interpolate_dits(first: str | Path, second: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``(1 - alpha) * first + alpha * second`` (floating tensors; others must be equal) to ``out``, in the
    second's dtype, with the second's config and metadata."""
    if not 0.0 <= alpha <= 1.0:
        raise LpmError(f"alpha must be in [0, 1], got {alpha}")
    a, meta_a = load_checkpoint(first, kind=CHECKPOINT_KIND)
    b, meta_b = load_checkpoint(second, kind=CHECKPOINT_KIND)
    cfg_a = {k: v for k, v in meta_a["config"].items() if k not in FREE_FIELDS}
    cfg_b = {k: v for k, v in meta_b["config"].items() if k not in FREE_FIELDS}
    if cfg_a != cfg_b:
        diff = sorted(k for k in set(cfg_a) | set(cfg_b) if cfg_a.get(k) != cfg_b.get(k))
        raise LpmError(f"{first} and {second} are not the same network (config differs in {diff})")
    if set(a) != set(b):
        raise LpmError(f"{first} and {second} hold different tensors: only in the first "
                       f"{sorted(set(a) - set(b))[:5]}, only in the second {sorted(set(b) - set(a))[:5]}")
    state = {}
    for name, tb in b.items():
        ta = a[name]
        if ta.shape != tb.shape:
            raise LpmError(f"{name}: {tuple(ta.shape)} in {first}, {tuple(tb.shape)} in {second}")
        if tb.is_floating_point():
            state[name] = ((1 - alpha) * ta.double() + alpha * tb.double()).to(tb.dtype)
        elif not torch.equal(ta, tb):
            raise LpmError(f"{name} is not a floating tensor and differs between {first} and {second}")
        else:
            state[name] = tb
    extra = dict(meta_b["extra"])
    record = {"first": str(first), "second": str(second), "alpha": float(alpha)}
    extra["export"] = {**(extra.get("export") or {}), "soup": record}
    for name in ("online", "base"):  # a restorer is named relative to the second's folder: renamed for out's
        section = extra.get(name)
        if isinstance(section, dict) and section.get("restorer"):
            extra[name] = with_restorer(section, Path(second).parent / section["restorer"], Path(out))
    return save_checkpoint(out, state, meta_b["config"], CHECKPOINT_KIND, extra)
