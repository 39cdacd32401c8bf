"""Build the damage corpus from a rendered world character and print what ingest and generate make of each case.

    python scripts/damage_corpus.py [--out /tmp/damage] [--seconds 3]

Prints a markdown table (docs/measurements.md, "Damaged media"): per case, what was done, what ``lpm data ingest``
yields (status, seconds decoded, clips, the damage counted) and what ``lpm generate`` reads as a voice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lpm.data.ingest import IngestOptions, ingest
from lpm.errors import MediaError
from lpm.media.corpus import build_corpus
from lpm.runtime.generate import load_audio

FPS, RATE = 25, 48000


def _content(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    from lpm.world.identity import sample_identity
    from lpm.world.motion import MOTION_INDEX, neutral_pose
    from lpm.world.render import Renderer

    n = int(seconds * FPS)
    pose = neutral_pose(n)
    pose[:, MOTION_INDEX["jaw_open"]] = 0.5 + 0.5 * np.sin(np.arange(n) / 3)
    frames = Renderer(sample_identity(11, "photo"), 128).render_sequence(pose)
    t = np.arange(int(seconds * RATE)) / RATE
    voice = (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    return frames, np.stack([voice, voice])


def _damage_cell(damage) -> str:
    parts = []
    if damage.video_lost_frames or damage.video_held_s:
        parts.append(f"video: {damage.video_lost_frames} lost ({damage.video_bad_packets} refused), "
                     f"held {damage.video_held_s:.2f} s")
    if damage.audio_bad_packets or damage.audio_silence_s:
        parts.append(f"audio: {damage.audio_bad_packets} refused, {damage.audio_silence_s:.3f} s silence")
    if damage.video_tail_lost_s or damage.audio_tail_lost_s:
        parts.append(f"truncated {damage.video_tail_lost_s:.2f} / {damage.audio_tail_lost_s:.2f} s (v/a)")
    if damage.audio_absent_s:
        parts.append(f"no audio {damage.audio_absent_s:.2f} s")
    if damage.audio_past_video_s:
        parts.append(f"audio past video {damage.audio_past_video_s:.2f} s")
    if damage.timestamp_jumps:
        parts.append(f"{damage.timestamp_jumps} jumps re-anchored")
    return "; ".join(parts) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/lpm_damage")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    root = Path(args.out)
    frames, audio = _content(args.seconds)
    cases = build_corpus(root / "corpus", frames, audio, FPS, RATE)
    t0 = time.perf_counter()
    report = ingest([str(c.path) for c in cases], root / "ingested",
                    IngestOptions(res=128, clip_min_s=1.0, clip_max_s=4.0, partner_channel="none", progress=False))
    wall = time.perf_counter() - t0
    sources = {Path(s.path).stem: s for s in report.sources}
    print("| case | damage made | ingest | damage counted | generate (voice) |")
    print("| --- | --- | --- | --- | --- |")
    for case in cases:
        s = sources[case.name]
        if s.status == "skipped":
            got, counted = f"refused: {s.reason.replace(str(case.path), case.path.name)[:90]}", "-"
        else:
            got = f"{s.frames / 24:.2f} of {case.seconds:.2f} s, {len(s.clips)} clip(s)"
            counted = _damage_cell(s.damage)
        try:
            pcm, damage = load_audio(case.path)
            voice = f"{len(pcm) / 16000:.2f} s" + (f", {damage.damaged_s:.2f} s damaged" if damage.any else "")
        except MediaError as e:
            voice = f"refused: {str(e).replace(str(case.path), case.path.name)[:60]}"
        print(f"| {case.name} | {case.kind} | {got} | {counted} | {voice} |")
    print(f"\n{len(cases)} files, {report.seconds_ingested:.1f} s decoded, {report.skipped_files} refused, "
          f"{report.damaged_files} damaged ({report.seconds_damaged:.2f} s counted), ingest wall {wall:.1f} s")


if __name__ == "__main__":
    main()
