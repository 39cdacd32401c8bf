"""The reaction detector's rules fitted to what the instruments read.

``metrics.BUMP_RULES`` sit at half the controller's reaction amplitudes, in the units of the true motion (F1 0.93 on
it). The instruments read some channels at a fraction of their true amplitude (brow raise ~0.4x, head roll ~0.5x,
from the slope of the reading against the truth on rendered clips) and others with frame noise that looks like small
nods, so the same thresholds on a reading miss raises and tilts and fire on noise. Here each reaction type's threshold
and minimum length are chosen on the instruments' reading of rendered calibration clips (held-out identities, a seed
the bench never uses) to match the true onsets best (onset F1, ``metrics.match_events``). The rules live in the state
reader's checkpoint (``state_train.train_states``), which is fitted on the same readings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from lpm.data.clip import STATE_NAMES
from lpm.eval import metrics as M
from lpm.world.motion import MOTION_INDEX

# Multiples of the motion rule's threshold tried, and of its minimum run length.
THRESHOLD_SCALES: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0)
MIN_FRAME_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5)
SPEAK = STATE_NAMES.index("speak")


@dataclass(frozen=True)
class CalibrationClips:
    """Read tracks of rendered clips with their truth."""

    read: np.ndarray  # (N, F, NUM_MOTION) the instruments' reading, MOTION_NAMES order
    states: np.ndarray  # (N, F) int64 state indices
    events: list[list[M.Event]]  # per clip, the true reactions

    def __post_init__(self) -> None:
        if self.read.ndim != 3 or self.states.shape != self.read.shape[:2] or len(self.events) != len(self.read):
            raise ValueError(f"calibration clips disagree: read {self.read.shape}, states {self.states.shape}, "
                             f"events for {len(self.events)} clips")


def reaction_mask(states: np.ndarray, edge_frames: int) -> np.ndarray:
    """(F,) bool: the frames a reaction may start on (not speaking, and not in the clip's last ``edge_frames``,
    where a reaction could not be completed)."""
    n = len(states)
    return (np.asarray(states) != SPEAK) & (np.arange(n) <= n - edge_frames)


def count_type(clips: CalibrationClips, kind: str, rule: M.BumpRule, edge_frames: int) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one reaction type's rule over the clips."""
    tp = fp = fn = 0
    ch = MOTION_INDEX[rule.channel]
    for read, states, events in zip(clips.read, clips.states, clips.events):
        allowed = reaction_mask(states, edge_frames)
        true_ev = [e for e in events if e.type == kind and allowed[min(e.frame, len(allowed) - 1)]]
        det = M.detect_reactions({rule.channel: read[:, ch]}, allowed, {kind: rule})
        m = M.match_events(true_ev, det)
        tp, fp, fn = tp + m.true_positives, fp + m.false_positives, fn + m.false_negatives
    return tp, fp, fn


def f1_score(tp: int, fp: int, fn: int) -> float:
    """Onset F1; NaN when there is nothing true and nothing detected."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def fit_reaction_rules(clips: CalibrationClips, edge_frames: int, base: dict[str, M.BumpRule] = M.BUMP_RULES
                       ) -> tuple[dict[str, M.BumpRule], dict[str, dict]]:
    """Per type, the threshold and minimum length (multiples of ``base``'s) with the best onset F1 on the clips.

    Ties go to the rule closest to ``base`` (a type with no true event keeps ``base``'s rule).

    Returns:
        (rules, report): report[type] = {"events", "threshold_scale", "min_frames", "f1_base", "f1", "tp", "fp", "fn"}.
    """
    rules, report = {}, {}
    for kind, rule in base.items():
        before = count_type(clips, kind, rule, edge_frames)
        best = (f1_score(*before), 0.0, rule, before)
        events = before[0] + before[2]
        if events:
            for ts in THRESHOLD_SCALES:
                for ms in MIN_FRAME_SCALES:
                    cand = dataclasses.replace(rule, threshold=rule.threshold * ts,
                                               min_frames=max(1, round(rule.min_frames * ms)))
                    counts = count_type(clips, kind, cand, edge_frames)
                    f1 = f1_score(*counts)
                    distance = abs(math.log(ts)) + abs(math.log(ms))
                    if f1 > best[0] + 1e-9 or (abs(f1 - best[0]) <= 1e-9 and distance < best[1]):
                        best = (f1, distance, cand, counts)
        f1, _, chosen, counts = best
        rules[kind] = chosen
        report[kind] = {"events": int(events), "threshold_scale": round(chosen.threshold / rule.threshold, 3),
                        "min_frames": chosen.min_frames, "f1_base": f1_score(*before), "f1": f1,
                        "tp": counts[0], "fp": counts[1], "fn": counts[2]}
    return rules, report


def rules_to_json(rules: dict[str, M.BumpRule]) -> dict[str, dict]:
    return {k: dataclasses.asdict(r) for k, r in rules.items()}


def rules_from_json(data: dict[str, dict]) -> dict[str, M.BumpRule]:
    """Rules as stored by ``rules_to_json``; an unknown reaction type or field is an error that names it."""
    out = {}
    fields = {f.name for f in dataclasses.fields(M.BumpRule)}
    for kind, d in data.items():
        if kind not in M.REACTION_TYPES:
            raise ValueError(f"reaction rules: unknown reaction type {kind!r}; expected one of {M.REACTION_TYPES}")
        if set(d) != fields:
            raise ValueError(f"reaction rules for {kind!r}: fields {sorted(d)}, expected {sorted(fields)}")
        out[kind] = M.BumpRule(**d)
    return out
