"""Contact sheets: a data set's references and sampled frames in one PNG a person can look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lpm.data.clip import read_clip, read_manifest, tensor_to_image
from lpm.data.video import read_mp4

TILE = 96
LABEL_H = 12
REF_ORDER = ("global", "body_front", "body_left", "body_right", "body_back",
             "expr_neutral", "expr_happy", "expr_sad", "expr_surprised", "expr_angry")
STATE_COLOURS = {"speak": (220, 60, 60), "listen": (60, 120, 220), "idle": (140, 140, 140)}


def _tile(img: np.ndarray, label: str, colour: tuple[int, int, int] = (30, 30, 30)) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + LABEL_H), (255, 255, 255))
    tile.paste(Image.fromarray(img).resize((TILE, TILE), Image.Resampling.LANCZOS), (0, 0))
    draw = ImageDraw.Draw(tile)
    draw.text((2, TILE), label[:16], fill=colour, font=ImageFont.load_default())
    return tile


def _pick_clips(rows: list[dict], max_clips: int) -> list[dict]:
    """One clip per (split, style) first, so every style and split shows; then fill up."""
    picked, seen = [], set()
    for r in rows:
        key = (r["split"], r.get("style"))
        if key not in seen:
            seen.add(key)
            picked.append(r)
    for r in rows:
        if len(picked) >= max_clips:
            break
        if r not in picked:
            picked.append(r)
    return picked[:max_clips]


def contact_sheet(root: str | Path, out: str | Path, max_clips: int = 8, frames_per_clip: int = 10) -> Path:
    """For each picked clip: a row of references, then a row of frames sampled across speak/listen/idle."""
    root = Path(root)
    rows = _pick_clips(read_manifest(root), max_clips)
    lines: list[Image.Image] = []
    for r in rows:
        clip = read_clip(root / r["path"], load_video=False)
        header = Image.new("RGB", (TILE * max(len(REF_ORDER), frames_per_clip), 14), (235, 235, 235))
        ImageDraw.Draw(header).text((2, 1), f"{r['id']}  [{r['split']}/{r['style']}]  {clip.meta.caption}"[:150],
                                    fill=(0, 0, 0), font=ImageFont.load_default())
        lines.append(header)
        refs = [_tile(tensor_to_image(clip.refs[n]), n) for n in REF_ORDER if n in clip.refs]
        lines.append(_row(refs))
        video = read_mp4(root / r["path"] / "video.mp4")
        states = clip.meta.states
        idx = _sample_frames(states, frames_per_clip)
        tiles = [_tile(video[i], f"{i} {states[i]}", STATE_COLOURS[states[i]]) for i in idx]
        lines.append(_row(tiles))
    width = max(im.width for im in lines)
    sheet = Image.new("RGB", (width, sum(im.height for im in lines)), (255, 255, 255))
    y = 0
    for im in lines:
        sheet.paste(im, (0, y))
        y += im.height
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _row(tiles: list[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (TILE * max(len(tiles), 1), TILE + LABEL_H), (255, 255, 255))
    for i, t in enumerate(tiles):
        row.paste(t, (i * TILE, 0))
    return row


def _sample_frames(states: list[str], k: int) -> list[int]:
    """Frames spread over the clip, favouring a mix of states (a speaking / listening strip)."""
    n = len(states)
    by_state = {s: [i for i, x in enumerate(states) if x == s] for s in STATE_COLOURS}
    picked: list[int] = []
    present = [s for s in ("speak", "listen", "idle") if by_state[s]]
    per = max(1, k // max(len(present), 1))
    for s in present:
        ids = by_state[s]
        picked += [ids[int(j)] for j in np.linspace(0, len(ids) - 1, min(per, len(ids)))]
    if len(picked) < k:
        picked += [int(j) for j in np.linspace(0, n - 1, k - len(picked))]
    return sorted(set(picked))[:k]
