"""``export_dit``: a training run's DiT weights as one inference checkpoint (``lpm export``).

A run directory (``lpm train base``, the distillation stages) holds ``dit.safetensors`` (the live weights) and
usually ``dit_ema.safetensors``; the EMA weights are the ones to ship (they sample better). Floating tensors are
cast to the export dtype (bf16 halves the file); ``lpm.models.dit.load_dit`` casts them back to the model's
dtype on load (fp32 on CPU: bf16 matmuls are very slow without native bf16). The config and the ``extra``
metadata (train config, ``online`` sampling, ...) are kept; ``extra["export"]`` records where the weights came
from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lpm.config import to_dict
from lpm.errors import LpmError
from lpm.models.dit import CHECKPOINT_KIND
from lpm.models.dit_config import stored_dit_config
from lpm.models.expression import brow_bounds
from lpm.models.idle_motion import (
    BlinkStats,
    IdleMotion,
    IdleStats,
    calibrate_blinks,
    calibrate_idle,
    idle_tracks,
)
from lpm.models.motion_track import (
    load_speech,
    measured_track_range,
    speech_network,
    speech_reactions,
    track_gains,
)
from lpm.training.checkpoint import load_checkpoint, save_checkpoint

EXPORT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
LIVE_WEIGHTS = "dit.safetensors"  # the names the trainers write in a run directory
EMA_WEIGHTS = "dit_ema.safetensors"


@dataclass
class Export:
    """What ``export_dit`` wrote."""

    path: Path  # the exported checkpoint
    source: Path  # the file its weights came from
    dtype: str  # an EXPORT_DTYPES key
    num_bytes: int  # size of the exported file
    source_bytes: int  # size of the source file
    idle: IdleStats | None = None  # the idle motion's calibration, when it was turned on
    blinks: BlinkStats | None = None  # its blinks' calibration, when the track has blink channels
    track_range: dict[str, tuple[float, float]] | None = None  # the range set by ``track_range`` ({}: removed)


def dit_weights_of(run: str | Path, ema: bool = True) -> Path:
    """The DiT weights file of ``run``: the file itself, or in a run directory the EMA weights (when ``ema``
    and present), else the live weights."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise LpmError(f"run {run} does not exist (expected a run directory or a .safetensors file)")
    if not run.is_dir():
        raise LpmError(f"run {run} is neither a directory nor a file")
    candidates = [run / EMA_WEIGHTS, run / LIVE_WEIGHTS] if ema else [run / LIVE_WEIGHTS]
    for path in candidates:
        if path.is_file():
            return path
    names = " or ".join(p.name for p in candidates)
    hint = f" (it has {EMA_WEIGHTS}: drop --no-ema)" if not ema and (run / EMA_WEIGHTS).is_file() else ""
    raise LpmError(f"run {run} has no {names}{hint}; is it a run of `lpm train base` or a distillation stage?")


def fewer_steps(online: dict | None, steps: int, source: Path) -> dict:
    """An Online checkpoint's ``extra.online`` with ``steps`` denoising steps per chunk: the first ``steps`` of the
    times it was distilled with, then 0 (the renoising sampler re-noises each prediction to the next time, so a
    prefix of the trained times is still what the student was trained on)."""
    if not online or "timesteps" not in online:
        raise LpmError(f"{source} is not an Online checkpoint (no extra.online.timesteps): nothing to shorten")
    trained = [float(t) for t in online["timesteps"]]
    if not 1 <= steps <= len(trained) - 1:
        raise LpmError(f"{source} was distilled with {len(trained) - 1} steps per chunk (times {trained}); "
                       f"--online-steps must be 1..{len(trained) - 1}, got {steps}")
    return {**online, "timesteps": trained[:steps] + [0.0]}


def sampling_section(extra: dict, cfg_attention: str, source: Path, what: str) -> tuple[str, dict]:
    """The ``extra`` entry a sampling setting of a checkpoint goes in, and its current value: ``"online"`` for a
    distilled (block-causal) model (which must have ``extra.online.timesteps``), ``"base"`` for a bidirectional
    one (``BaseSampling``'s stored settings, read by ``lpm bench``'s Base system)."""
    if cfg_attention == "bidirectional":
        return "base", dict(extra.get("base") or {})
    online = extra.get("online")
    if not online or "timesteps" not in online:
        raise LpmError(f"{source} is not an Online checkpoint (no extra.online.timesteps) nor a Base one: the "
                       f"{what} is a setting of the streamed or the Base model")
    return "online", dict(online)


def with_track_gain(section: dict, spec: dict[str, float], channels: tuple[str, ...]) -> dict:
    """A checkpoint's sampling entry (``extra.online`` / ``extra.base``) with its track gain set to ``spec``
    expanded over ``channels`` (gains of 1 dropped; none left: the entry removed)."""
    gains = {k: v for k, v in track_gains(spec, channels).items() if v != 1.0}
    section = {k: v for k, v in section.items() if k != "track_gain"}
    return {**section, "track_gain": gains} if gains else section


def with_restorer(section: dict, restorer: str | Path, out: Path) -> dict:
    """A checkpoint's sampling entry naming ``restorer`` (checked to load) relative to ``out``'s folder; ``""``:
    the entry removed."""
    section = {k: v for k, v in section.items() if k != "restorer"}
    if not str(restorer):
        return section
    from lpm.models.restorer import load_restorer

    load_restorer(restorer)  # a clear error now rather than at the first session
    return {**section, "restorer": os.path.relpath(Path(restorer).resolve(), out.resolve().parent)}


def export_dit(run: str | Path, out: str | Path, ema: bool = True, dtype: str = "bf16",
               speech: str | Path | None = None, idle_motion: str | Path | None = None,
               idle_scale: float = 1.0, cache: tuple[int, int] | None = None,
               online_steps: int | None = None, track_gain: dict[str, float] | None = None,
               restorer: str | Path | None = None, base_steps: int | None = None,
               base_guidance: dict[str, float] | None = None, track_range: str | Path | None = None,
               brow_exemplar: str | None = None) -> Export:
    """Write ``run``'s DiT weights to ``out`` (atomically) in ``dtype``, with the config and metadata kept.

    Args:
        run: a run directory or a DiT ``.safetensors`` file.
        out: the exported checkpoint.
        ema: prefer the EMA weights of a run directory.
        dtype: ``bf16`` or ``fp32``; floating tensors are cast, others kept.
        speech: a ``lpm train speech`` checkpoint whose weights replace the DiT's speech network (one retrained on
            more data after the DiT trained: the DiT renders whatever track it is given).
        idle_motion: a world data set: turn on ``idle_motion`` calibrated on its train clips' head-pose tracks.
        idle_scale: the idle motion's amplitudes times this (1 = the measured spread).
        cache: ``(sink_chunks, window_chunks)`` of the streamed model's KV cache, replacing the run's (the same
            weights attend to fewer or more earlier chunks; a model trained on 2-chunk windows saw one).
        online_steps: denoising steps per chunk of the streamed model, fewer than it was distilled with: its
            timesteps become the first ``online_steps`` trained times then 0 (1: the prediction from noise alone).
        track_gain: motion channel (or shell pattern, ``emo_*``) -> gain on the track the model predicts from its
            audio, stored in ``extra["online"]["track_gain"]`` (a Base checkpoint: ``extra["base"]``; ``{}``:
            none); docs/learning.md "Track gain".
        restorer: a ``lpm train restorer`` checkpoint the model's decoded frames go through, recorded in
            ``extra["online"]["restorer"]`` (a Base checkpoint: ``extra["base"]``) as a path relative to ``out``'s
            folder (keep the two files together; ``""`` removes it).
        track_range: a world data set: the gained track is clipped to the range (``RANGE_PERCENTILES`` per channel:
            the 1st-99th percentile of the head angles, 0.1-99.9th of the rest) the true motion of its train clips
            covers, stored in ``extra["online"]["track_range"]`` (a Base checkpoint: ``extra["base"]``) as channel
            -> [lo, hi] in rig units; ``""`` removes it.
        brow_exemplar: ``"lo,hi"``: the streamed model's canvas moves toward the surprised exemplar as its track's
            brow raise goes from lo to hi (rig units, after the gain and range), stored in
            ``extra["online"]["brow_exemplar"]`` (``lpm.models.expression.brow_exemplar_weight``; the model needs
            ``expression_canvas``); ``""`` removes it.
        base_steps: ODE steps per window a Base checkpoint samples with (``extra["base"]["steps"]``; ``lpm
            bench --base-steps`` still overrides it).
        base_guidance: classifier-free guidance scales a Base checkpoint samples with, condition -> scale
            (``lpm.diffusion.cfg.CONDITIONS``; ``{}``: none), in ``extra["base"]["guidance"]`` instead of its
            training config's.
    """
    if dtype not in EXPORT_DTYPES:
        raise LpmError(f"unknown export dtype {dtype!r}; known: {', '.join(EXPORT_DTYPES)}")
    source = dit_weights_of(run, ema)
    state, meta = load_checkpoint(source, kind=CHECKPOINT_KIND)
    cfg = stored_dit_config(meta["config"])  # a config the current code cannot build fails here, not at load
    extra = dict(meta["extra"])
    earlier = extra.get("export")
    extra["export"] = {"run": str(run), "source": source.name, "dtype": dtype}
    if earlier:  # an export of an export (a new sampling setting): the first one's record is kept
        extra["export"]["from"] = earlier
    if speech is not None:
        if not cfg.motion_channels:
            raise LpmError(f"{source} has no motion track: a speech network has nothing to replace")
        # The speech network brings its own listening reactions (onset head, templates) and their settings.
        cfg = dataclasses.replace(cfg, **speech_reactions(speech))
        speech_state, speech_extra = load_speech(speech, cfg)
        prefix = "speech_motion."
        own = set(speech_network(cfg).state_dict())
        if own != set(speech_state):
            raise LpmError(f"{speech} holds {sorted(speech_state)}, the DiT's speech network {sorted(own)}")
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        state.update({prefix + k: v for k, v in speech_state.items()})
        meta = {**meta, "config": to_dict(cfg)}
        extra["export"]["speech"] = {"path": str(speech), "val_r": speech_extra.get("val_r")}
    idle = blinks = None
    if idle_motion is not None:
        cfg = dataclasses.replace(stored_dit_config(meta["config"]), idle_motion=True)  # checks what it needs
        module = IdleMotion(cfg.motion_channels, cfg.latent_channels)
        head, blink = idle_tracks(idle_motion, cfg.motion_channels)
        idle = calibrate_idle(module, head, scale=idle_scale)
        blinks = calibrate_blinks(module, blink) if blink is not None else None
        state = {k: v for k, v in state.items() if not k.startswith("idle_motion.")}
        state.update({f"idle_motion.{k}": v for k, v in module.state_dict().items()})
        meta = {**meta, "config": to_dict(cfg)}
        extra["export"]["idle_motion"] = {"data": str(idle_motion), **dataclasses.asdict(idle),
                                          "blinks": None if blinks is None else dataclasses.asdict(blinks)}
    if cache is not None:
        sink, window = cache
        if sink < 0 or window < 1:
            raise LpmError(f"the KV cache needs sink chunks >= 0 and window chunks >= 1, got {sink},{window}")
        cfg = dataclasses.replace(stored_dit_config(meta["config"]), sink_chunks=sink, window_chunks=window)
        meta = {**meta, "config": to_dict(cfg)}
        extra["export"]["cache"] = {"sink_chunks": sink, "window_chunks": window}
    if online_steps is not None:
        extra["online"] = fewer_steps(extra.get("online"), online_steps, source)
        extra["export"]["online_steps"] = online_steps
    if track_gain is not None:
        name, section = sampling_section(extra, cfg.attention, source, "track gain")
        extra[name] = with_track_gain(section, track_gain, cfg.motion_channels)
        extra["export"]["track_gain"] = extra[name].get("track_gain", {})
    ranges = None
    if track_range is not None:
        name, section = sampling_section(extra, cfg.attention, source, "track range")
        section = {k: v for k, v in section.items() if k != "track_range"}
        ranges = measured_track_range(track_range, cfg.motion_channels) if str(track_range) else {}
        extra[name] = {**section, "track_range": {k: list(v) for k, v in ranges.items()}} if ranges else section
        extra["export"]["track_range"] = {"data": str(track_range), "range": extra[name].get("track_range", {})}
    if brow_exemplar is not None:
        if cfg.attention == "bidirectional" or not cfg.expression_canvas:
            what = "a Base checkpoint" if cfg.attention == "bidirectional" else "a model without expression_canvas"
            raise LpmError(f"{source}: --brow-exemplar draws the streamed model's brow raise on its expression "
                           f"canvas; this is {what}")
        name, section = sampling_section(extra, cfg.attention, source, "brow exemplar")
        section = {k: v for k, v in section.items() if k != "brow_exemplar"}
        try:
            bounds = brow_bounds(brow_exemplar) if brow_exemplar else None
        except ValueError as e:
            raise LpmError(f"--brow-exemplar: {e}") from None
        extra[name] = {**section, "brow_exemplar": list(bounds)} if bounds else section
        extra["export"]["brow_exemplar"] = list(bounds) if bounds else None
    if restorer is not None:
        name, section = sampling_section(extra, cfg.attention, source, "restorer")
        extra[name] = with_restorer(section, restorer, Path(out))
        extra["export"]["restorer"] = extra[name].get("restorer")
    if base_steps is not None:
        if cfg.attention != "bidirectional":
            raise LpmError(f"{source} is not a Base (bidirectional) checkpoint: --base-steps sets how a Base model "
                           f"samples (an Online one: --online-steps)")
        if base_steps < 1:
            raise LpmError(f"--base-steps must be >= 1, got {base_steps}")
        extra["base"] = {**(extra.get("base") or {}), "steps": int(base_steps)}
        extra["export"]["base_steps"] = int(base_steps)
    if base_guidance is not None:
        if cfg.attention != "bidirectional":
            raise LpmError(f"{source} is not a Base (bidirectional) checkpoint: --base-guidance sets how a Base model "
                           f"samples (an Online one has no guidance: it was distilled with it)")
        from lpm.diffusion.cfg import GuidanceSpec

        try:
            GuidanceSpec(dict(base_guidance))
        except ValueError as e:
            raise LpmError(f"--base-guidance: {e}") from None
        bad = {k: v for k, v in base_guidance.items() if not 0 < float(v) <= 20}
        if bad:
            raise LpmError(f"--base-guidance scales must be in (0, 20], got {bad}")
        extra["base"] = {**(extra.get("base") or {}), "guidance": {k: float(v) for k, v in base_guidance.items()}}
        extra["export"]["base_guidance"] = extra["base"]["guidance"]
    torch_dtype = EXPORT_DTYPES[dtype]
    state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = save_checkpoint(out, state, meta["config"], CHECKPOINT_KIND, extra)
    return Export(path, source, dtype, path.stat().st_size, source.stat().st_size, idle, blinks, ranges)
