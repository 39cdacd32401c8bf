"""Offline generation from files (``lpm generate``): reference images and two voices -> an mp4.

It runs the same streaming ``Session`` and ``DiTEngine`` the server runs (``SessionConfig(realtime=False)``:
chunks start as soon as their audio is there, nothing is skipped), so a file generated here is what a live
session with the same audio, references and seed shows when it keeps up with the clock. Inputs are checked
before the model loads:

- audio: anything PyAV decodes (wav, mp3, flac, ogg, m4a, a video's sound, ...) through ``lpm.media``: any
  sample rate and channel layout (downmixed, resampled to 16 kHz); a damaged packet is skipped and its hole
  filled with silence, counted and warned about; only a file with no decodable sample is refused. Either voice
  may be missing (silence of the other's length), not both.
- references: ``--reference`` is the global image; ``--refs DIR`` adds ``body_<view>.png`` / ``expr_<name>.png``
  (the clip format's ``refs/``; its ``global.png`` stands in when ``--reference`` is not given). Any size and
  mode (RGBA on white, grayscale, palette -> RGB; EXIF orientation applied; an animation's first frame; huge
  pictures refused or downscaled, ``lpm.media.image``). Each is cropped to the world's framing around its face
  (``lpm.media.framing``; the centre square without a face; ``--no-frame`` keeps it as given, for the engine's
  centre crop); the mp4's ``comment`` tag records each crop, ``--frame-debug PNG`` draws the global one.

The mp4 has one frame per 1/24 s of audio (the audio's length, rounded to a frame) and stereo audio: the
character's voice left, the partner's right (the clip format's channel order).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lpm.data.video import write_mp4
from lpm.errors import LpmError
from lpm.fsutil import atomic_path
from lpm.media.damage import DecodeDamage
from lpm.media.decode_audio import decode_audio
from lpm.media.framing import Framing, debug_image, frame_references
from lpm.media.image import read_picture
from lpm.models.dit_config import DiTConfig, stored_dit_config
from lpm.runtime.dit_engine import DEFAULT_VAE
from lpm.runtime.engines import FPS, SAMPLE_RATE, Character, Engine
from lpm.training.checkpoint import read_metadata

DEFAULT_CHECKPOINT = "checkpoints/online_tiny.safetensors"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FRAMING_TAG = "lpm reference framing: "  # the mp4 comment tag's prefix (JSON follows)


@dataclass
class GenerateConfig:
    """One offline generation: inputs, model and output."""

    out: str  # the mp4 to write
    reference: str | None = None  # global reference image (None: ``refs/global.png``)
    refs: str | None = None  # folder of extra references (body_<view>.png, expr_<name>.png)
    audio: str | None = None  # the character's own voice
    partner: str | None = None  # the partner's voice
    text: str = ""  # text control (an emotion, a caption)
    checkpoint: str = DEFAULT_CHECKPOINT  # DiT checkpoint (an Online export; its metadata sets the sampling)
    vae: str = DEFAULT_VAE  # latent codec (lpm.models.latent_codec.load_codec spec)
    seed: int = 0  # noise seed: the same inputs and seed give the same video
    refiner: bool = False  # add the one-step refiner stage
    device: str = "cpu"
    progress: bool = True  # a progress bar over chunks (stderr)
    frame: bool = True  # crop each reference to the world's framing around its face (False: as given)
    frame_debug: str | None = None  # a PNG showing the global reference with its crop and face box
    # Split every DiT forward over the processes of this torchrun job (lpm.parallel; every rank runs generate with
    # the same inputs, rank 0 writes the mp4).
    sequence_parallel: bool = False
    # Under torchrun: generator, refiner and decoder each on its own rank (lpm.runtime.staged_engine), rank 0 writes.
    staged: bool = False


@dataclass
class GenerateResult:
    """What ``generate`` wrote and how long the model took."""

    path: Path
    frames: int
    seconds: float  # length of the video (and its audio)
    compute_s: float  # wall time from the session's start to its last frame
    resolution: int
    framing: dict[str, Framing] = field(default_factory=dict)  # how each reference was framed
    damage: DecodeDamage = field(default_factory=DecodeDamage)  # what decoding the voices skipped or filled
    written: bool = True  # False on the ranks of a sequence-parallel job other than 0 (they write nothing)

    @property
    def compute_fps(self) -> float:
        return self.frames / max(self.compute_s, 1e-9)

    def summary(self) -> str:
        out = (f"wrote {self.path}: {self.frames} frames, {self.seconds:.2f} s at {FPS} fps, "
               f"{self.resolution}x{self.resolution}, {self.compute_fps:.1f} compute fps ({self.compute_s:.1f} s)")
        if "global" in self.framing:
            f = self.framing["global"]
            out += f"; reference framed by {f.method}, crop (x, y, side) {tuple(round(v) for v in f.crop)}"
        return out


# ---- audio ----
def load_audio(path: str | Path) -> tuple[np.ndarray, DecodeDamage]:
    """An audio file (or a video's sound) as the session's input, over damage (``lpm.media.decode_audio``).

    Returns:
        ((N,) float32 mono at 16 kHz (channels averaged), what decoding skipped or filled).
    """
    decoded = decode_audio(path, SAMPLE_RATE)
    return decoded.pcm.mean(axis=0).astype(np.float32), decoded.damage


def load_voices(audio: str | None, partner: str | None) -> tuple[np.ndarray, np.ndarray, DecodeDamage]:
    """Both voices at 16 kHz, the shorter (or a missing one) padded with silence to the longer, and the damage
    met decoding both."""
    if audio is None and partner is None:
        raise LpmError("give the character's voice (--audio), the partner's (--partner), or both")
    none = (np.zeros(0, np.float32), DecodeDamage())
    own, own_damage = load_audio(audio) if audio is not None else none
    other, other_damage = load_audio(partner) if partner is not None else none
    n = max(len(own), len(other))
    return np.pad(own, (0, n - len(own))), np.pad(other, (0, n - len(other))), own_damage.merge(other_damage)


# ---- references ----
def load_references(reference: str | None, refs: str | None, known: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Reference kind -> ``(H, W, 3)`` uint8 RGB as given: the global image and the extras of ``refs``.

    Args:
        known: the reference kinds the model knows (``DiTConfig.reference_kinds``).
    """
    paths: dict[str, Path] = {}
    if refs is not None:
        folder = Path(refs)
        if not folder.is_dir():
            raise LpmError(f"--refs {folder} is not a directory")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            if path.stem not in known:
                extras = ", ".join(k + ".png" for k in known if k != "global")
                raise LpmError(f"{path}: unknown reference {path.stem!r}; a --refs folder holds {extras} "
                               "(and optionally global.png)")
            if path.stem in paths:
                raise LpmError(f"{folder}: two images for reference {path.stem!r}: {paths[path.stem].name}, "
                               f"{path.name}")
            paths[path.stem] = path
    if reference is not None:
        paths["global"] = Path(reference)
    if "global" not in paths:
        where = f" and {refs} has no global.png" if refs is not None else ""
        raise LpmError(f"no global reference image: give --reference IMG{where}")
    return {kind: read_picture(path).image for kind, path in paths.items()}


def framing_comment(framing: dict[str, Framing]) -> str:
    """The mp4 ``comment`` tag: how each reference was framed, as JSON after a fixed prefix."""
    return FRAMING_TAG + json.dumps({kind: f.to_json() for kind, f in framing.items()}, separators=(",", ":"))


# ---- generation ----
def check_checkpoint(checkpoint: str) -> DiTConfig:
    """The DiT config of ``checkpoint``; a missing one is an error saying how to make it."""
    if not Path(checkpoint).is_file():
        how = ""
        if checkpoint == DEFAULT_CHECKPOINT:
            how = (f" (the Online tiny model is not shipped yet: export a distilled Online run with "
                   f"`lpm export --run RUN --out {DEFAULT_CHECKPOINT}`)")
        raise LpmError(f"DiT checkpoint {checkpoint} does not exist{how}; or pass --checkpoint PATH "
                       "(any DiT checkpoint, e.g. runs/NAME/dit_ema.safetensors)")
    return stored_dit_config(read_metadata(checkpoint)["config"])


def frames_for_samples(num_samples: int) -> int:
    """Video frames for ``num_samples`` of 16 kHz audio: its length rounded to a frame."""
    return int(round(num_samples * FPS / SAMPLE_RATE))


class OfflineRun:
    """A whole recording through a non-realtime ``Session``: exactly one frame per 1/24 s of audio.

    Args:
        engine: the engine (the session owns and closes it).
        self_pcm, partner_pcm: ``(N,)`` float32 at 16 kHz, the same length.
        text: the text control for the whole recording.
        progress: a tqdm bar over chunks on stderr.

    Attributes:
        compute_s: wall time from the session's start to its last frame (set when iteration ends).
    """

    def __init__(self, engine: Engine, self_pcm: np.ndarray, partner_pcm: np.ndarray, text: str = "",
                 progress: bool = True) -> None:
        if len(self_pcm) != len(partner_pcm):
            raise ValueError("both voices must have the same length")
        self.engine, self.self_pcm, self.partner_pcm, self.text = engine, self_pcm, partner_pcm, text
        self.num_frames = frames_for_samples(len(self_pcm))
        if self.num_frames < 1:
            raise LpmError(f"the audio is shorter than one frame (1/{FPS} s)")
        self.progress = progress
        self.compute_s = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        """``(H, W, 3)`` uint8 frames; raises ``LpmError`` if the session fails or ends early (so a writer
        consuming this leaves no partial file)."""
        from tqdm import tqdm

        from lpm.runtime.session import Session, SessionConfig

        per_chunk, n = self.engine.frames_per_chunk, self.num_frames
        cfg = SessionConfig(realtime=False, vad="off", max_buffer_s=len(self.self_pcm) / SAMPLE_RATE + 1.0)
        bar = tqdm(total=-(-n // per_chunk), desc="generate", unit="chunk", disable=not self.progress,
                   dynamic_ncols=True)
        started, count = time.perf_counter(), 0
        with bar, Session(self.engine, cfg) as session:
            session.set_text(self.text)
            session.push_self_audio(self.self_pcm, native=True)
            session.push_partner_audio(self.partner_pcm, native=True)
            session.finish()
            for _, image in session.frames():
                count += 1
                if count % per_chunk == 0 or count == n:
                    bar.update(1)
                if count == n:
                    self.compute_s = time.perf_counter() - started
                yield image
                if count == n:
                    return
            if session.error is not None:
                raise LpmError(f"generation failed: {session.error}")
            raise LpmError(f"the session ended after {count} of {n} frames")


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Check every input, then run a session over the whole audio and write the mp4 (see the module docstring)."""
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig

    model_cfg = check_checkpoint(cfg.checkpoint)
    self_pcm, partner_pcm, damage = load_voices(cfg.audio, cfg.partner)
    if frames_for_samples(len(self_pcm)) < 1:
        raise LpmError(f"the audio is shorter than one frame (1/{FPS} s)")
    if damage.any:  # said before the long part: the video will show what the damaged audio allowed
        print(f"lpm: warning: the voices were decoded with damage: {damage.summary()}", file=sys.stderr)
    pictures = load_references(cfg.reference, cfg.refs, model_cfg.reference_kinds)
    images, framing = frame_references(pictures, cfg.frame)
    if cfg.frame_debug:
        with atomic_path(Path(cfg.frame_debug), ".png") as tmp:
            Image.fromarray(debug_image(pictures["global"], framing["global"])).save(tmp, format="PNG")
    character = Character(images=images)
    engine_cfg = DiTEngineConfig(checkpoint=cfg.checkpoint, vae=cfg.vae, seed=cfg.seed, refiner=cfg.refiner,
                                 device=cfg.device)
    main = True
    if cfg.staged and cfg.sequence_parallel:
        raise LpmError("stages across ranks (--stages) and sequence parallelism are one or the other for now")
    if cfg.staged:
        engine, main = staged_engine(character, engine_cfg)
        if not main:  # this rank serves its stage until rank 0's session ends
            return GenerateResult(Path(cfg.out), frames_for_samples(len(self_pcm)), len(self_pcm) / SAMPLE_RATE, 0.0,
                                  engine.resolution, framing, damage, written=False)
    elif cfg.sequence_parallel:
        engine, main = sequence_parallel_engine(character, engine_cfg)
    else:
        engine = DiTEngine.load(character, engine_cfg)
    run = OfflineRun(engine, self_pcm, partner_pcm, cfg.text, cfg.progress and main)
    with closing(iter(run)) as frames:  # the session closes even if the writer fails
        if main:
            path = write_mp4(cfg.out, frames, fps=FPS, audio=np.stack([self_pcm, partner_pcm]),
                             sample_rate=SAMPLE_RATE, comment=framing_comment(framing))
        else:  # the other ranks run the same session (their collectives pair with rank 0's) and write nothing
            path = Path(cfg.out)
            for _ in frames:
                pass
    return GenerateResult(path, run.num_frames, len(self_pcm) / SAMPLE_RATE, run.compute_s, engine.resolution,
                          framing, damage, written=main)


def staged_engine(character: Character, cfg) -> tuple[Engine, bool]:
    """Rank 0: a ``StagedEngine`` (the session's engine, its later stages on the other ranks), True. The other ranks
    serve their stage (``serve_stages``) and return their engine, False. One rank per engine stage (generate,
    refine with ``--refiner``, decode); every rank loads the whole engine."""
    from lpm.runtime.dit_engine import DiTEngine
    from lpm.runtime.staged_engine import StagedEngine, serve_stages
    from lpm.training.distributed import init_distributed

    info = init_distributed(cfg.device)
    if not info.distributed:
        raise LpmError("stages across ranks run under torchrun, one process per stage: torchrun --nproc_per_node 3 "
                       "-m lpm.cli generate --stages --refiner ... (2 without --refiner)")
    engine = DiTEngine.load(character, replace(cfg, device=info.device))
    if info.is_main:
        return StagedEngine(engine, device=info.device), True
    serve_stages(engine, device=info.device)
    return engine, False


def sequence_parallel_engine(character: Character, cfg) -> tuple[Engine, bool]:
    """A ``DiTEngine`` whose DiT splits every forward over this torchrun job's processes (``lpm.parallel``), and
    whether this is rank 0. Every rank must call it with the same inputs (offline sessions only: a live session's
    skip decisions differ between ranks)."""
    import torch

    from lpm.models.dit import load_dit
    from lpm.models.latent_codec import load_codec
    from lpm.parallel import SequenceParallelDiT, init_sequence_group
    from lpm.runtime.dit_engine import DiTEngine, flow_config_of

    group = init_sequence_group(cfg.device)
    if group.world_size == 1:
        raise LpmError("sequence parallelism runs under torchrun: torchrun --nproc_per_node N -m lpm.cli generate ...")
    device = f"cuda:{torch.cuda.current_device()}" if cfg.device.startswith("cuda") else cfg.device
    model = SequenceParallelDiT(load_dit(cfg.checkpoint, device=device), group)
    engine = DiTEngine(model, load_codec(cfg.vae, device=device), character, replace(cfg, device=device),
                       flow_config_of(cfg.checkpoint))
    return engine, group.is_main
