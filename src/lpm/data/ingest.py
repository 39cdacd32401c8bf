"""``lpm data ingest``: real footage into the clip format (ARCHITECTURE.md), one source file at a time.

Two decoding passes per source keep memory to the output crops: pass 1 tracks the face, finds cuts and
measures quality at a small analysis size; the audio gives self / partner voices and per-frame labels; the
usable runs of each shot become clips; pass 2 crops those frames (the crop box smoothed over time) and
the clips are written with references chosen from the rest of the source.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from lpm.data import ingest_audio as ia
from lpm.data.clip import SAMPLE_RATE, write_clip
from lpm.data.ingest_face import FaceTrack, FaceTracker
from lpm.data.ingest_refs import RefPicker, colour_signature, same_person_shots
from lpm.data.ingest_shots import ShotDetector
from lpm.errors import LpmError
from lpm.fsutil import atomic_write_text
from lpm.media.damage import DecodeDamage
from lpm.media.decode_audio import SAMPLE_RATE as MEDIA_RATE
from lpm.media.decode_audio import audio_for_video
from lpm.media.decode_video import FrameReader, probe
from lpm.media.framing import FACE_BOX_FRACTION, FACE_CENTRE_Y, square_crop

assert MEDIA_RATE == SAMPLE_RATE
FPS = 24
STYLE = "real"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
SIDECAR_SUFFIXES = (".partner.wav", ".partner.mp4", ".partner.m4a", ".partner.mkv")
CROP_SMOOTH_S = 0.4  # Gaussian sigma of the crop-box path: removes detector jitter, keeps head movement
MAX_UPSCALE = 2.0  # faces needing more than this upscaling to the world's face size are "too small"
BLUR_MIN_SHARPNESS = 40.0  # Laplacian variance of the face below this: blurred (world faces score 700-5000)
VAL_EVERY = 10  # one source in this many (by a hash of its name) goes to the val split
SHEET_FRAMES = 6  # frames per clip row in the contact sheet
SHEET_ROWS = 8
MOTION_ESTIMATED = ("head_yaw", "head_pitch", "head_roll", "mouth_open", "eye_open_l", "eye_open_r")
BEHAVIOUR_TEXT = {"speak": "talking to someone", "listen": "listening to someone talk",
                  "conversation": "in a lively conversation", "idle": "waiting quietly"}
DROP_REASONS = ("face_lost", "face_too_small", "blur", "short_run", "audio_clipped")


@dataclass
class IngestOptions:
    """What ``lpm data ingest`` was asked for."""

    res: int = 128  # output frame side
    clip_min_s: float = 3.0
    clip_max_s: float = 8.0
    partner_channel: str = "auto"  # auto | none | channel index
    split: str = "auto"  # auto (by source) | train | val | zeroshot
    progress: bool = True


@dataclass
class SourceResult:
    """One input file's outcome."""

    path: str
    status: str  # ok | skipped
    reason: str = ""
    split: str = ""
    seconds: float = 0.0
    frames: int = 0
    shots: int = 0
    clips: list[str] = field(default_factory=list)
    dropped_frames: dict[str, int] = field(default_factory=dict)  # quality reason -> frames not in any clip
    audio_method: str = ""
    self_channel: int = -1
    audio_silent: bool = False
    vad: str = ""
    damage: DecodeDamage = field(default_factory=DecodeDamage)  # what decoding skipped, filled or lost
    damaged_s: float = 0.0  # damage.damaged_s: media seconds not decoded as content
    wall_s: float = 0.0


@dataclass
class IngestReport:
    """``DIR/ingest_report.json``."""

    sources: list[SourceResult]
    clips: int
    seconds_ingested: float  # footage decoded (all sources that were read)
    seconds_in_clips: float
    wall_s: float
    speed: float  # seconds of footage per second of wall time
    dropped_frames: dict[str, int]  # per quality reason, over all sources
    skipped_files: int
    damaged_files: int  # files read with damage (skipped packets, holes, truncation), see each source's damage
    seconds_damaged: float  # media seconds not decoded as content, over all sources
    damage: DecodeDamage  # the sum over all sources
    options: dict


def _split_for(path: Path, opts: IngestOptions) -> str:
    """Every clip of a source shares its split, so one person never sits in train and val."""
    if opts.split != "auto":
        return opts.split
    digest = int(hashlib.sha1(path.stem.encode()).hexdigest(), 16)
    return "val" if digest % VAL_EVERY == 0 else "train"


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", path.stem).strip("-")[:40] or "source"


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def clip_ranges(usable: np.ndarray, shots: list[tuple[int, int]], min_frames: int,
                max_frames: int) -> list[tuple[int, int]]:
    """Cut every usable run inside a shot into clips of min..max frames (equal lengths per run)."""
    out = []
    for s0, s1 in shots:
        for a, b in _runs(usable[s0:s1]):
            n = b - a
            if n < min_frames:
                continue
            k = -(-n // max_frames)
            while k > 1 and n // k < min_frames:
                k -= 1
            size = min(max_frames, n // k)
            out += [(s0 + a + i * size, s0 + a + (i + 1) * size) for i in range(k)]
    return out


def frame_reasons(track: FaceTrack, scale: float, res: int) -> np.ndarray:
    """Per-frame quality verdict: "" (usable) or the first failing reason (face_lost, face_too_small, blur).

    Args:
        scale: source pixels per analysis pixel (the face must be big enough in the source itself).
        res: output side; a face needing more than MAX_UPSCALE to reach the world's face size is too small.
    Returns:
        (F,) object array of str.
    """
    min_face = FACE_BOX_FRACTION * res / MAX_UPSCALE
    reason = np.full(track.num_frames, "", dtype=object)
    reason[~track.present] = "face_lost"
    reason[(reason == "") & (track.box[:, 2] * scale < min_face)] = "face_too_small"
    reason[(reason == "") & (track.sharpness < BLUR_MIN_SHARPNESS)] = "blur"
    return reason


def crop_path(track: FaceTrack, usable: np.ndarray, shots: list[tuple[int, int]]) -> np.ndarray:
    """Per-frame crop square (cx, cy, side) in analysis pixels, smoothed over each usable run of a shot.

    Returns:
        (F, 3) float32; rows outside usable runs are zero.
    """
    out = np.zeros((track.num_frames, 3), np.float32)
    sigma = CROP_SMOOTH_S * FPS
    for s0, s1 in shots:
        for a, b in _runs(usable[s0:s1]):
            box = gaussian_filter1d(track.box[s0 + a: s0 + b].astype(np.float64), sigma, axis=0, mode="nearest")
            side = box[:, 2] / FACE_BOX_FRACTION
            out[s0 + a: s0 + b] = np.stack([box[:, 0], box[:, 1] + (0.5 - FACE_CENTRE_Y) * side, side], axis=1)
    return out


def _sidecar(path: Path) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        p = path.with_name(path.stem + suffix)
        if p.is_file():
            return p
    return None


def _caption(states: list[str]) -> str:
    share = {s: states.count(s) / max(1, len(states)) for s in ("speak", "listen", "idle")}
    if share["speak"] > 0.2 and share["listen"] > 0.2:
        mode = "conversation"
    else:
        mode = max(share, key=share.get)
    return f"a person filmed on camera, {BEHAVIOUR_TEXT[mode]}."


def _contact_sheet(path: Path, rows: list[tuple[dict[str, np.ndarray], np.ndarray]], res: int) -> None:
    """One row per clip: its global reference, then SHEET_FRAMES frames spread over the clip."""
    from PIL import Image

    rows = rows[:SHEET_ROWS]
    cols = 1 + SHEET_FRAMES
    sheet = Image.new("RGB", (cols * res, max(1, len(rows)) * res), (32, 32, 32))
    for r, (refs, frames) in enumerate(rows):
        sheet.paste(Image.fromarray(refs["global"]), (0, r * res))
        for c, i in enumerate(np.linspace(0, len(frames) - 1, SHEET_FRAMES).round().astype(int)):
            sheet.paste(Image.fromarray(frames[i]), ((c + 1) * res, r * res))
    sheet.save(path)


def ingest_source(path: Path, out: Path, opts: IngestOptions, bar: tqdm | None = None) -> tuple[SourceResult, list]:
    """Ingest one file; returns its result and manifest rows. Raises LpmError on unreadable input."""
    t0 = time.perf_counter()
    split = _split_for(path, opts)
    info = probe(path)
    tracker, shots_det = FaceTracker(), ShotDetector()
    reader = FrameReader(info, FPS)
    try:
        for frame in reader:
            tracker.update(frame)
            shots_det.update(frame)
            if bar is not None:
                bar.update()
    finally:
        tracker.close()
    track = tracker.track()
    n = track.num_frames
    result = SourceResult(str(path), "ok", split=split, seconds=n / FPS, frames=n)

    # Audio: self / partner voices and labels.
    audio, audio_damage = audio_for_video(path, n, FPS)
    damage = reader.damage.merge(audio_damage)
    mouth = ia.mouth_evidence(track.mouth_open, track.present)
    sidecar = _sidecar(path)
    if sidecar is not None:
        partner, sidecar_damage = audio_for_video(sidecar, n, FPS)  # aligned to sample 0 of the video
        damage = damage.merge(sidecar_damage)
        partner = partner.mean(axis=0) if partner.shape[0] else np.zeros(partner.shape[1], np.float32)
        mono = audio.mean(axis=0) if audio.shape[0] else np.zeros(audio.shape[1], np.float32)
        tracks = ia.AudioTracks(mono, partner.astype(np.float32), "sidecar")
    else:
        tracks = ia.split_channels(audio, opts.partner_channel, n, mouth, str(path), FPS)
    lab = ia.labels(tracks, n, FPS)
    result.audio_method, result.self_channel, result.vad = tracks.method, tracks.self_channel, lab.vad
    result.audio_silent = ia.is_silent(tracks.self_pcm) and ia.is_silent(tracks.partner_pcm)
    result.damage, result.damaged_s = damage, damage.damaged_s

    reason = frame_reasons(track, info.source_width / info.width, opts.res)
    usable = reason == ""
    shots = shots_det.shots()
    result.shots = len(shots)
    ranges = clip_ranges(usable, shots, round(opts.clip_min_s * FPS), round(opts.clip_max_s * FPS))
    spf = SAMPLE_RATE / FPS
    kept = []
    for a, b in ranges:
        if ia.is_clipped(tracks.self_pcm[round(a * spf): round(b * spf)]):
            reason[a:b] = "audio_clipped"
        else:
            kept.append((a, b))
    in_clip = np.zeros(n, bool)
    for a, b in kept:
        in_clip[a:b] = True
    reason[(reason == "") & ~in_clip] = "short_run"
    result.dropped_frames = {r: int((reason[~in_clip] == r).sum()) for r in DROP_REASONS}

    # Pass 2: crops of every usable frame (clip frames and reference candidates).
    boxes = crop_path(track, usable, shots)
    crops: dict[int, np.ndarray] = {}
    for i, frame in enumerate(FrameReader(info, FPS)):  # the same decode as pass 1: the same frames
        if i < n and usable[i]:
            cx, cy, side = boxes[i]
            crops[i] = square_crop(frame, cx, cy, side, opts.res)
        if bar is not None:
            bar.update()

    picker = RefPicker(track, usable)
    shot_of = np.zeros(n, np.int64)
    for k, (a, b) in enumerate(shots):
        shot_of[a:b] = k
    same_shots = same_person_shots({i: colour_signature(c) for i, c in crops.items()}, shots)
    stereo = np.stack([tracks.self_pcm, tracks.partner_pcm])
    est = np.concatenate([track.pose, track.mouth_open[:, None], track.eye_open], axis=1).astype(np.float32)
    rows, sheet_rows = [], []
    for k, (a, b) in enumerate(kept):
        clip_id = f"{split}_{STYLE}_{_slug(path)}_{k:04d}"
        frames = np.stack([crops[i] for i in range(a, b)])
        choice = picker.pick(a, b, same_shots[shot_of[a]][shot_of])  # references show the clip's own person
        refs = {name: crops[i] for name, i in choice.frames.items() if i in crops}
        states = lab.states[a:b]
        meta = {
            "id": clip_id, "split": split, "style": STYLE, "caption": _caption(states), "states": states,
            "events": [], "source": "ingest", "source_file": str(path), "source_frames": [a, b],
            "identity": {"source": path.name}, "seeds": {},
            "motion_estimated": True,
            "motion_note": "mediapipe face mesh estimates; head_yaw is camera-relative (head and body together)",
            "audio": {"method": tracks.method, "self_channel": tracks.self_channel, "vad": lab.vad},
            "refs_outside_clip": choice.outside_clip,
            "ref_frames": choice.frames,
        }
        s0, s1 = round(a * spf), round(b * spf)
        rows.append(write_clip(out / clip_id, frames, stereo[:, s0:s1], refs, meta, est[a:b], MOTION_ESTIMATED))
        result.clips.append(clip_id)
        sheet_rows.append((refs, frames))
    if sheet_rows:
        _contact_sheet(out / f"contact_{_slug(path)}.png", sheet_rows, opts.res)
    result.wall_s = time.perf_counter() - t0
    return result, rows


def find_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, and the video files inside any directory given (sidecar partner files excluded)."""
    out = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_EXTENSIONS
                          and not any(q.name.endswith(s) for s in SIDECAR_SUFFIXES))
        else:
            out.append(p)
    return out


DONE_DIR = ".ingest"  # per source, written after its last clip: {"options", "result", "rows"}


def _done_path(root: Path, path: Path) -> Path:
    return root / DONE_DIR / f"{_slug(path)}.json"


def finished_source(root: Path, path: Path, opts: IngestOptions) -> tuple[SourceResult, list] | None:
    """The result and rows of a source a previous run finished with the same options, else None."""
    from lpm.config import ConfigError, from_dict

    marker = _done_path(root, path)
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
        if done["options"] != _clip_options(opts) or not all((root / r["path"] / "meta.json").is_file()
                                                              for r in done["rows"]):
            return None
        return from_dict(SourceResult, done["result"]), done["rows"]
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError):
        return None  # unreadable: ingest it again


def _clip_options(opts: IngestOptions) -> dict:
    """The options that change what a source's clips are (progress bars do not)."""
    return {k: v for k, v in asdict(opts).items() if k != "progress"}


def ingest_file(path: Path, root: Path, opts: IngestOptions, position: int = 0) -> tuple[SourceResult, list]:
    """Ingest one source (a local loop step or one Ray task): its clips, then its done-marker, atomically.

    Never raises for a bad file: the reason goes into a ``skipped`` result (and no marker, so a rerun retries it).
    """
    try:
        total = 2 * probe(path).expected_frames  # two passes
        with tqdm(total=total, desc="frames", unit="frame", disable=not opts.progress, position=position,
                  leave=False) as bar:
            res, rows = ingest_source(path, root, opts, bar)
        if res.damage.any:  # always said, also without progress bars: the data set is not what was recorded
            tqdm.write(f"lpm: warning: {path}: {res.damage.summary()}", file=sys.stderr)
    except Exception as e:  # one bad file must not stop the rest; the reason goes into the report
        reason = str(e) if isinstance(e, LpmError) else f"{type(e).__name__}: {e}"
        if opts.progress:
            tqdm.write(f"lpm: skipped {path}: {reason}")
        return SourceResult(str(path), "skipped", reason=reason), []
    marker = _done_path(root, path)
    marker.parent.mkdir(exist_ok=True)
    atomic_write_text(marker, json.dumps({"options": _clip_options(opts), "result": asdict(res), "rows": rows}))
    return res, rows


def ingest(inputs: list[str], out: str | Path, opts: IngestOptions, ray: str | None = None) -> IngestReport:
    """Ingest every input into ``out``; unreadable files are reported and skipped.

    A source finished by an earlier run with the same options is not read again (its clips and marker are kept).
    ``ray``: ``auto`` or a Ray cluster address: one Ray task per source file (``lpm.data.ray_jobs``).
    """
    from lpm.world.synth import write_manifest  # merges rows by id with clips already there

    if not opts.clip_min_s > 0 or opts.clip_max_s < opts.clip_min_s:
        raise LpmError(f"--clip-seconds: need 0 < min <= max, got {opts.clip_min_s}-{opts.clip_max_s}")
    if not 32 <= opts.res <= 1024 or opts.res % 2:
        raise LpmError(f"--res must be even and within 32..1024, got {opts.res}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = find_inputs(inputs)
    if not paths:
        raise LpmError(f"no input files found in {inputs}")
    t0 = time.perf_counter()
    results, rows, todo = [], [], []
    for path in paths:
        done = finished_source(root, path, opts)
        if done is None:
            todo.append(path)
        else:
            results.append(done[0])
            rows += done[1]
    file_bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="files", unit="file",
                    disable=not opts.progress, position=0)
    if ray:
        from lpm.data.ray_jobs import ray_map

        quiet = IngestOptions(**{**asdict(opts), "progress": False})
        outcomes = ray_map(ingest_file, [(path, root, quiet) for path in todo], ray)
    else:
        outcomes = (ingest_file(path, root, opts, position=1) for path in todo)
    for res, new_rows in outcomes:
        results.append(res)
        rows += new_rows
        file_bar.update()
    file_bar.close()
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order.get(r.path, len(order)))  # the report lists sources as given
    if rows:
        write_manifest(root, rows)
    wall = time.perf_counter() - t0
    seconds = sum(r.seconds for r in results)
    dropped = {k: sum(r.dropped_frames.get(k, 0) for r in results) for k in DROP_REASONS}
    damage = DecodeDamage()
    for r in results:
        damage = damage.merge(r.damage)
    report = IngestReport(
        sources=results, clips=len(rows), seconds_ingested=seconds,
        seconds_in_clips=sum(r["frames"] for r in rows) / FPS, wall_s=wall, speed=seconds / max(wall, 1e-9),
        dropped_frames=dropped, skipped_files=sum(r.status == "skipped" for r in results),
        damaged_files=sum(r.damage.any for r in results), seconds_damaged=damage.damaged_s, damage=damage,
        options=asdict(opts))
    atomic_write_text(root / "ingest_report.json", json.dumps(asdict(report), indent=1))
    return report
