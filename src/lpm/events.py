"""Events on a frame axis (reactions, blinks, ...) and their matching: one definition for the bench's listening
figures (``lpm.eval.metrics``) and the speech network's reaction onsets (``lpm.training.speech_trainer``)."""

from __future__ import annotations

from dataclasses import dataclass

# A detected event matches a true one of the same type when their onsets differ by at most this (frames).
MATCH_TOLERANCE_FRAMES = 8


@dataclass(frozen=True)
class Event:
    """One event: its type and onset frame (and, for true reactions, the frame of the cue it answers)."""

    type: str
    frame: int
    cue_frame: int | None = None


@dataclass
class EventMatch:
    """Detected events matched to true ones."""

    true_positives: int
    false_positives: int
    false_negatives: int
    pairs: list[tuple[Event, Event]]  # (true, detected)

    @property
    def precision(self) -> float:
        d = self.true_positives + self.false_positives
        return self.true_positives / d if d else float("nan")

    @property
    def recall(self) -> float:
        d = self.true_positives + self.false_negatives
        return self.true_positives / d if d else float("nan")

    @property
    def f1(self) -> float:
        d = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / d if d else float("nan")

    def __add__(self, other: EventMatch) -> EventMatch:
        return EventMatch(self.true_positives + other.true_positives, self.false_positives + other.false_positives,
                          self.false_negatives + other.false_negatives, self.pairs + other.pairs)


def match_events(truth: list[Event], detected: list[Event],
                 tolerance: int = MATCH_TOLERANCE_FRAMES) -> EventMatch:
    """Greedy one-to-one matching of same-type events, closest onsets first, within ``tolerance`` frames."""
    cands = sorted((abs(t.frame - d.frame), i, j) for i, t in enumerate(truth) for j, d in enumerate(detected)
                   if t.type == d.type and abs(t.frame - d.frame) <= tolerance)
    used_t, used_d, pairs = set(), set(), []
    for _, i, j in cands:
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            pairs.append((truth[i], detected[j]))
    tp = len(pairs)
    return EventMatch(tp, len(detected) - tp, len(truth) - tp, pairs)
