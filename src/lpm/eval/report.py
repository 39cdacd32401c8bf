"""The bench report: ``report.json`` (the contract of ARCHITECTURE.md), ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lpm.eval import metrics as M
from lpm.eval.paired import paired_report
from lpm.eval.scoring import POOLED_KEYS
from lpm.eval.suites import METRIC_KEYS, ClipTruth, SystemResult
from lpm.world.motion import MOTION_INDEX

# Columns of the main table: (label, category, key, format).
HEADLINE: tuple[tuple[str, str, str, str], ...] = (
    ("lip r", "speaking", "lipsync_r", "{:.3f}"),
    ("A/V off", "speaking", "av_offset_frames", "{:+d}"),
    ("silent closed", "speaking", "silent_mouth_closed", "{:.3f}"),
    ("listen F1", "listening", "listen_f1", "{:.3f}"),
    ("react p50 s", "listening", "reaction_delay_p50_s", "{:.2f}"),
    ("state acc", "conversation", "state_acc", "{:.3f}"),
    ("pose err deg", "seen", "pose_err_deg", "{:.1f}"),
    ("text emo acc", "text_control", "text_emotion_acc", "{:.3f}"),
    ("id sim", "seen", "identity_sim", "{:.3f}"),
    ("wFID", "seen", "world_fid", "{:.1f}"),
    ("ZS lip r", "zeroshot", "lipsync_r", "{:.3f}"),
    ("ZS silent closed", "zeroshot", "silent_mouth_closed", "{:.3f}"),
    ("ZS listen F1", "zeroshot", "listen_f1", "{:.3f}"),
    ("ZS text emo acc", "zeroshot", "text_emotion_acc", "{:.3f}"),
    ("ZS id sim", "zeroshot", "identity_sim", "{:.3f}"),
    ("ZS wFID", "zeroshot", "world_fid", "{:.1f}"),
    ("fps", "seen", "fps", "{:.0f}"),
    ("lat p50 s", "seen", "latency_p50_s", "{:.2f}"),
    ("lat p95 s", "seen", "latency_p95_s", "{:.2f}"),
    ("peak RSS MB", "seen", "peak_rss_mb", "{:.0f}"),
)
# Headline metrics with a paired difference in the report (the A/V offset is a lag, not a pooled quality).
PAIRED_KEYS = tuple(k for k in POOLED_KEYS if k != "av_offset_frames")
# Instrument validation: the truth row must reach these, or the instrument is flagged as not good enough.
TRUTH_MIN = {"lipsync_r": 0.8, "listen_f1": 0.8, "silent_mouth_closed": 0.9, "state_acc": 0.85,
             "text_emotion_acc": 0.85}
# The probes' r against the true motion on the truth render must reach this for these channels.
TRUTH_CHANNEL_MIN = 0.6
TRUTH_CHANNELS = ("blink_l", "brow_raise", "gaze_x", "gaze_y")
# Identity: ROC AUC of own vs same-style other reference, and how much more often than the truth a damaged
# copy must fall below the off-identity threshold.
IDENTITY_AUC_MIN = 0.95
IDENTITY_LOW_MARGIN = 0.1
# Which validation each metric rests on (a failed one flags the metric's figures with "(!)").
RESTS_ON = {"lipsync_r": "lipsync_r", "av_offset_frames": "lipsync_r", "silent_mouth_closed": "silent_mouth_closed",
            "listen_f1": "listen_f1", "listen_precision": "listen_f1", "listen_recall": "listen_f1",
            "reaction_delay_p50_s": "listen_f1", "reaction_delay_p90_s": "listen_f1", "state_acc": "state_acc",
            "text_emotion_acc": "text_emotion_acc", "identity_sim": "identity", "identity_low_share": "identity"}
SPLIT_OF = {"speaking": "val", "listening": "val", "conversation": "val", "text_control": "val", "seen": "val",
            "zeroshot": "zeroshot"}
PROBE_CHANNELS = ("jaw_open", "mouth_round", "mouth_wide", "blink_l", "gaze_x", "gaze_y", "head_yaw", "head_pitch",
                  "head_roll", "brow_raise", "smile", "body_yaw")


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return fmt.format(int(value) if fmt.endswith("d}") else value)
    except (TypeError, ValueError):
        return str(value)


def truth_channel_r(results: list[SystemResult], truths: dict[str, ClipTruth]) -> dict[str, dict[str, float]]:
    """split -> channel -> Pearson r of the truth render's probe reading against the true motion (pooled frames)."""
    truth = next((r for r in results if r.name == "truth" and r.available and r.readings), None)
    if truth is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for split in ("val", "zeroshot"):
        rs = [x for x in truth.readings if x.split == split and x.inputs_id in truths]
        if not rs:
            continue
        pred = np.concatenate([x.track.motion for x in rs])
        true = np.concatenate([truths[x.inputs_id].motion for x in rs])
        out[split] = {c: M.pearson(pred[:, i], true[:, i]) for c, i in MOTION_INDEX.items()
                      if true[:, i].std() > 1e-6}
    return out


def validation(results: list[SystemResult], channel_r: dict | None = None,
               identity: dict | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Notes on whether the instruments read the truth well enough to be trusted, and split -> the validations
    that failed there (``RESTS_ON`` names)."""
    truth = next((r for r in results if r.name == "truth" and r.available), None)
    if truth is None:
        return ["truth was not run: the instruments are not validated in this report"], {}
    notes, failed = [], {}

    def note(ok: bool, text: str, split: str, name: str) -> None:
        notes.append(f"{'OK' if ok else 'NOT GOOD ENOUGH'}: {text}"
                     f"{'' if ok else ': figures built on it are not trustworthy here'}")
        if not ok:
            failed.setdefault(split, []).append(name)

    for cat in ("seen", "zeroshot", "long"):
        m = truth.metrics.get(cat)
        if not m or not m.get("clips"):
            continue
        split = SPLIT_OF.get(cat, cat)
        for key, lo in TRUTH_MIN.items():
            v = m.get(key)
            if v is not None:
                note(v >= lo, f"truth {key} = {v:.3f} on {cat} (needs >= {lo})", split, key)
    for split, rs in (channel_r or {}).items():
        for c in TRUTH_CHANNELS:
            v = rs.get(c)
            if v is not None and math.isfinite(v):
                note(v >= TRUTH_CHANNEL_MIN, f"read r of {c} on the {split} truth render = {v:.3f} "
                     f"(needs >= {TRUTH_CHANNEL_MIN})", split, f"probe_{c}")
    for split, chk in (identity or {}).items():
        worst = min(low for _, low in chk["degraded"].values())
        ok = chk["auc"] >= IDENTITY_AUC_MIN and worst >= chk["truth_low"] + IDENTITY_LOW_MARGIN
        note(ok, f"identity on the {split} truth render: AUC {chk['auc']:.3f} (needs >= {IDENTITY_AUC_MIN}); "
             f"share below {chk['threshold']:.3f}: truth {chk['truth_low']:.3f}, "
             + ", ".join(f"{k} {low:.3f}" for k, (_, low) in chk["degraded"].items())
             + f" (each needs >= truth + {IDENTITY_LOW_MARGIN})", split, "identity")
    return notes, failed


def instrument_summary(inst, identity_checks: dict | None = None) -> dict:
    """The instrument accuracy figures that go into the report (``inst``: ``suites.Instruments``)."""
    out: dict = {"probe": {}, "identity": {}, "states": inst.states_accuracy,
                 "identity_checks": identity_checks or {}, "face": None,
                 "head": getattr(inst, "head", None) is not None}
    if inst.face_accuracy:  # the face reader's own figures (its channels are already in "probe")
        out["face"] = {split: {k: acc[k] for k in ("locator_px_p50", "locator_px_p95", "visibility_acc")}
                       for split, acc in inst.face_accuracy.items()}
    for split, acc in inst.probe_accuracy.items():
        out["probe"][split] = {"frames": acc["frames"], "emotion_acc": acc["emotion_acc"],
                               "channels": {c: acc["channels"][c] for c in PROBE_CHANNELS}}
    for split, v in inst.identity_accuracy.items():
        out["identity"][split] = {k: v[k] for k in ("eer", "accuracy", "threshold", "same_mean", "diff_mean")}
    return out


def to_json(suite: str, results: list[SystemResult], instruments: dict, wall_s: float, notes: list[str],
            machine: dict | None = None, failed: dict[str, list[str]] | None = None) -> dict:
    """The ``report.json`` object. ``metrics[cat]["ci95"][key]`` = [low, high], the 95 % bootstrap interval over
    clips; ``failed_validation``: split -> the instrument validations that failed there."""
    systems = []
    for r in results:
        row = {"name": r.name, "available": r.available, "reason": r.reason, "note": r.note,
               "metrics": {cat: {k: m.get(k) for k in (*METRIC_KEYS, "ci95")} for cat, m in r.metrics.items()}}
        if r.long is not None:
            row["long"] = r.long
        systems.append(row)
    return {"suite": suite, "wall_s": round(wall_s, 1), "machine": machine or {}, "instruments": instruments,
            "validation": notes, "failed_validation": failed or {}, "systems": systems}


def _cell(m: dict, cat: str, key: str, fmt: str, failed: dict[str, list[str]]) -> str:
    """A metric with its interval, "(!)" when the validation it rests on failed in the category's split."""
    text = _fmt(m.get(key), fmt)
    ci = (m.get("ci95") or {}).get(key)
    if ci is not None and m.get(key) is not None:
        f = fmt.replace(":+d", ":+.0f").replace(":d", ":.0f")
        text += f" ({f.format(ci[0])}, {f.format(ci[1])})"
    if m.get(key) is not None and RESTS_ON.get(key) in failed.get(SPLIT_OF.get(cat, cat), ()):
        text += " (!)"
    return text


def _paired_markdown(paired: dict) -> list[str]:
    """The paired-differences table: each system minus the baseline on the headline metrics, bold where the paired
    interval excludes 0."""
    if not paired:
        return []
    cols = [(label, cat, key, fmt) for label, cat, key, fmt in HEADLINE if key in PAIRED_KEYS]
    lines = ["", f"## Paired differences against `{paired['baseline']}`", "",
             "Each figure is the system's minus the baseline's on the clips both rated, with the 95 % paired bootstrap "
             "interval (the clips resampled jointly, `lpm.eval.paired`). **Bold**: the interval excludes 0, a "
             "difference beyond clip-sampling noise; otherwise the two cannot be told apart on these clips.", "",
             "| system | " + " | ".join(f"Δ {c[0]}" for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, cats in paired["systems"].items():
        cells = []
        for _, cat, key, fmt in cols:
            d = (cats.get(cat) or {}).get(key)
            if d is None:
                cells.append("–")
                continue
            f = fmt.replace(":.3f", ":+.3f").replace(":.2f", ":+.2f").replace(":.1f", ":+.1f")
            text = f.format(d[0])
            if d[1] is not None:
                text += f" ({f.format(d[1])}, {f.format(d[2])})"
                if d[1] > 0 or d[2] < 0:
                    text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: dict) -> str:
    """``report.md``: the systems x metrics table, the per-category tables, instrument notes."""
    machine = report["machine"]
    busy = f"{machine['busy_cores']} cores busy with other work, " if "busy_cores" in machine else ""
    lines = [f"# lpm bench: `{report['suite']}` suite", "",
             f"Wall time {report['wall_s']:.0f} s on {machine.get('cpus', '?')} CPUs with "
             f"{machine.get('threads', '?')} torch thread(s) ({busy}load average {machine.get('load_avg', '?')} "
             "at the start: speed figures are relative to the machine's state). Seen styles = `val` clips (held-out "
             "identities); ZS = the zero-shot `sketch` style. A dash is a metric that does not apply or could not "
             "be measured. World-FID compares probe features with the truth render of the same clips (truth = 0 by "
             "construction). In brackets: the 95 % bootstrap interval over clips. (!) marks a figure whose "
             "instrument failed its validation on the truth render of that split (see Instruments).", ""]
    failed = report.get("failed_validation", {})
    head = "| system | " + " | ".join(h[0] for h in HEADLINE) + " |"
    lines += [head, "|" + "---|" * (len(HEADLINE) + 1)]
    for s in report["systems"]:
        if not s["available"]:
            lines.append(f"| {s['name']} | not available: {s['reason']} |" + " |" * (len(HEADLINE) - 1))
            continue
        cells = [_cell(s["metrics"].get(cat, {}), cat, key, fmt, failed) for _, cat, key, fmt in HEADLINE]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    for paired in [report.get("paired") or {}, *report.get("paired_also", [])]:
        lines += _paired_markdown(paired)
    lines += ["", "## Per category", ""]
    keys = [k for k in METRIC_KEYS if k not in ("fps", "latency_p50_s", "latency_p95_s", "peak_rss_mb")]
    cats = []
    for s in report["systems"]:
        cats += [c for c in s["metrics"] if c not in cats]
    for cat in cats:
        lines += [f"### {cat}", "", "| system | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for s in report["systems"]:
            m = s["metrics"].get(cat)
            if not s["available"] or not m:
                continue
            lines.append(f"| {s['name']} | " + " | ".join(
                _cell(m, cat, k, {"av_offset_frames": "{:+d}", "clips": "{:d}"}.get(k, "{:.3g}"), failed)
                for k in keys) + " |")
        lines.append("")
    lines += ["## Instruments", ""]
    inst = report["instruments"]
    for split, acc in inst["probe"].items():
        ch = ", ".join(f"{c} MAE {v['mae']:.3g} r {v['r']:.3f}" for c, v in acc["channels"].items())
        readers = [what for what, on in (("the head pose reader's angles", inst.get("head")),
                                          ("the face reader's channels and emotion", inst.get("face"))) if on]
        who = "Motion probe" + (" with " + " and ".join(readers) if readers else "")
        lines.append(f"- {who} on {split} ({acc['frames']} frames): emotion acc {acc['emotion_acc']:.3f}; {ch}.")
    for split, v in (inst.get("face") or {}).items():
        lines.append(f"- Face reader on {split}: anchor error "
                     f"{v['locator_px_p50']:.2f} px median, {v['locator_px_p95']:.2f} px p95; visibility acc "
                     f"{v['visibility_acc']:.3f}.")
    for split, v in inst["identity"].items():
        lines.append(f"- Identity embedding on {split}: EER {v['eer']:.3f} (verification accuracy "
                     f"{v['accuracy']:.3f} at cosine {v['threshold']:.2f}; same {v['same_mean']:.2f}, "
                     f"different {v['diff_mean']:.2f}).")
    if inst.get("states"):
        lines.append("- State reader on the probe tracks of its calibration clips (held-out identities): "
                     f"acc {inst['states']['calib_probe_tracks']:.3f} "
                     f"({inst['states']['calib_true_motion']:.3f} on their true motion).")
    for split, rs in inst.get("truth_channel_r", {}).items():
        lines.append(f"- Tracks of the {split} truth render (probe + face reader) vs true motion, r: "
                     + ", ".join(f"{c} {v:.2f}" for c, v in rs.items() if v is not None and math.isfinite(v)) + ".")
    for split, chk in inst.get("identity_checks", {}).items():
        lines.append(f"- Identity on the {split} truth render ({chk['clips']} clips, {chk['frames']} frames): ROC AUC "
                     f"own vs same-style other reference {chk['auc']:.3f}; mean similarity / share below "
                     f"{chk['threshold']:.3f}: truth {chk['truth_mean']:.3f} / {chk['truth_low']:.3f}, "
                     + ", ".join(f"{k} {m:.3f} / {low:.3f}" for k, (m, low) in chk["degraded"].items()) + ".")
    lines += ["", "Instrument validation on the truth row:", ""] + [f"- {n}" for n in report["validation"]]
    lines += ["", "## Systems", ""]
    for s in report["systems"]:
        lines.append(f"- `{s['name']}`: {s['note']}" + ("" if s["available"] else f" Not available: {s['reason']}"))
    return "\n".join(lines) + "\n"


def _pick(truths: dict[str, ClipTruth], key) -> str | None:
    ids = [i for i, t in truths.items() if t.states.size and key(t) > 0]
    return max(ids, key=lambda i: key(truths[i])) if ids else None


PLOTS = ("lipsync.png", "listening.png", "strip.png", "identity_long.png")  # every plot ``plot_all`` may write


def plot_all(out: Path, results: list[SystemResult], truths: dict[str, ClipTruth]) -> list[Path]:
    """Lip-sync trace vs truth, listening events on a timeline, identity over time (long session)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ran = [r for r in results if r.available and r.readings]
    by_id = {r.name: {x.inputs_id: x for x in r.readings} for r in ran}
    common = set.intersection(*(set(v) for v in by_id.values())) if by_id else set()

    def choose(key) -> tuple[str | None, list[SystemResult]]:
        """The clip to plot: the best by ``key`` among the clips every system performed (subsets differ), else
        among all clips; and the systems that performed it."""
        for pool in ({i: t for i, t in truths.items() if i in common}, truths):
            val = {i: t for i, t in pool.items() if i.startswith("val")} or pool
            clip = _pick(val, key) or _pick(pool, key)
            if clip:
                return clip, [r for r in ran if clip in by_id[r.name]]
        return None, []

    clip, shown = choose(lambda t: int((t.states == 0).sum()))
    if clip:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        t = np.arange(len(truths[clip].motion)) / M.FPS
        ax.plot(t, truths[clip].motion[:, MOTION_INDEX["jaw_open"]], "k", lw=2.5, label="truth motion")
        for r in shown:
            ax.plot(t, by_id[r.name][clip].track.channel("jaw_open"), lw=1.2, label=f"{r.name} (probe)")
        ax.fill_between(t, 0, 1, where=truths[clip].states == 0, color="0.9", label="speaking", step="mid")
        ax.set(xlabel="s", ylabel="jaw_open", title=f"Lip sync: {clip}", ylim=(0, 1))
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        paths.append(out / "lipsync.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    clip, shown = choose(lambda t: len(t.reactions))
    if clip:
        truth = truths[clip]
        rows = [("truth motion", truth.motion)] + [(f"{r.name} (probe)", by_id[r.name][clip].track.motion)
                                                    for r in shown]
        fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.6 * len(rows)), sharex=True)
        axes = np.atleast_1d(axes)
        t = np.arange(len(truth.motion)) / M.FPS
        colors = {"nod": "C0", "brow_raise": "C1", "head_tilt": "C2", "smile": "C3"}
        for ax, (label, motion) in zip(axes, rows):
            ax.plot(t, motion[:, MOTION_INDEX["head_pitch"]] / 10, color="C0", lw=1, label="pitch/10")
            ax.plot(t, motion[:, MOTION_INDEX["brow_raise"]], color="C1", lw=1, label="brow")
            ax.plot(t, motion[:, MOTION_INDEX["head_roll"]] / 10, color="C2", lw=1, label="roll/10")
            ax.plot(t, motion[:, MOTION_INDEX["smile"]], color="C3", lw=1, label="smile")
            for e in truth.reactions:
                ax.axvline(e.frame / M.FPS, color=colors[e.type], ls="--", lw=1)
            det = M.detect_reactions({c: motion[:, i] for c, i in MOTION_INDEX.items()}, truth.states != 0)
            for e in det:
                ax.plot(e.frame / M.FPS, 0.9, "v", color=colors[e.type], ms=8)
            ax.set_ylabel(label, fontsize=7)
            ax.set_ylim(-1.2, 1.2)
        axes[0].legend(fontsize=6, ncol=4, loc="lower left")
        axes[0].set_title(f"Listening reactions: {clip} (dashed = true events, triangles = detected)")
        axes[-1].set_xlabel("s")
        fig.tight_layout()
        paths.append(out / "listening.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    both = {i: t for i, t in truths.items() if i in common}
    val = [i for i in both if i.startswith("val")] or list(both)
    clip = next((i for i in val if all(by_id[r.name][i].thumbs is not None for r in ran)), None)
    if clip:  # a strip of frames per system: the first clip every system performed
        rows = [(r.name, by_id[r.name][clip].thumbs) for r in ran]
        cols = len(rows[0][1])
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 1.6 * len(rows)), squeeze=False)
        for (name, thumbs), line in zip(rows, axes):
            for k, ax in enumerate(line):
                ax.imshow(thumbs[k])
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(name, fontsize=8)
        fig.suptitle(f"Frames of {clip} (evenly spaced over the clip)", fontsize=9)
        fig.tight_layout()
        paths.append(out / "strip.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    longs = [r for r in results if r.long]
    if longs:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        for r in longs:
            y = r.long["identity_sim_per_min"]
            ax.plot(np.arange(len(y)) + 0.5, y, "o-", label=r.name)
        ax.set(xlabel="minute", ylabel="identity similarity to reference", title="Long session: identity over time")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "identity_long.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_report(out: str | Path, suite: str, results: list[SystemResult], truths: dict[str, ClipTruth],
                 instruments: dict, wall_s: float, machine: dict | None = None,
                 baseline: str | list[str] | None = None) -> dict:
    """Write report.json, report.md and the plots under ``out``; returns the JSON object. ``baseline``: a system
    every other is compared with, clip for clip (``paired.paired_report``; skipped when it did not run), or a list
    of them: the first's table is ``report["paired"]``, the others' ``report["paired_also"]``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    instruments = {**instruments, "truth_channel_r": truth_channel_r(results, truths)}
    notes, failed = validation(results, instruments["truth_channel_r"], instruments.get("identity_checks"))
    report = to_json(suite, results, instruments, wall_s, notes, machine, failed)
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or [])
    if baselines:
        report["paired"] = paired_report(results, baselines[0])
    more = [t for t in (paired_report(results, b) for b in baselines[1:]) if t]
    if more:
        report["paired_also"] = more
    report["plots"] = [p.name for p in plot_all(out, results, truths)]
    for name in set(PLOTS) - set(report["plots"]):  # a plot this run could not draw is not left from an old one
        (out / name).unlink(missing_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(to_markdown(report))
    return report
