"""References for ingested clips: global image, body views by estimated yaw, expression exemplars by clustering.

Every choice is a frame index of the source; frames outside the clip are preferred, so a reference never
shows the very frame the model is asked to produce (as in the world, where references are separate renders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpm.data.ingest_face import EXPRESSION_FEATURES, FaceTrack

FRONTAL_SCALE_DEG = 10.0  # this much yaw + pitch costs as much as one standard deviation of expression
SHARP_WEIGHT = 0.5  # cost per e-fold of blur relative to the sharpest frame
BLINK_FRACTION = 0.6  # eyes less open than this fraction of the source's median count as a blink
FRONT_MAX_DEG = 20.0  # |yaw| within this is a front view
SIDE_MIN_DEG = 35.0  # |yaw| beyond this is a side view (mediapipe loses faces near 90 degrees)
# Beyond ~60 degrees of turn the mesh folds and reads as near-frontal with a strong roll; such frames are no
# view reference (people seldom hold their head this tilted).
ROLL_MAX_DEG = 15.0
SIGNATURE_BINS = 8  # colour-signature bins per channel
SAME_PERSON_DISTANCE = 0.25  # histogram distance (0..1) below which two shots show the same person
EXPR_CLUSTERS = 5
MIN_FRAMES_PER_CLUSTER = 12  # half a second of frames per expression cluster at least
KMEANS_ITERS = 30
EXPR_MIN_SCORE = 1.0  # a cluster is named only when it sits this many scale units along a template from neutral
# Cost per scale unit of mouth opening above the source's median, in an expression exemplar's choice: of a
# cluster's frames the one with the lips closest to shut wins unless it is far from the cluster's centre. Exemplars
# show the emotion with the lips closed, as the world draws them (``lpm.world.synth.render_references``): a model
# drawing each frame on its emotion's exemplar (``DiTConfig.expression_canvas``) takes the mouth's opening from
# the audio, and an exemplar's open mouth stays open in silence (docs/learning.md, arm 39).
EXPR_MOUTH_OPEN_COST = 1.0
# Typical spread of each expression feature (inter-ocular units) between a neutral face and a clear
# expression; fixed, so a source with little expression variation does not get its noise named.
EXPRESSION_SCALES = {"mouth_open": 0.1, "mouth_width": 0.08, "corner_lift": 0.03, "brow_height": 0.03,
                     "eye_open": 0.06}
# Expression templates: direction (over EXPRESSION_FEATURES) of each emotion away from neutral.
EXPRESSION_TEMPLATES: dict[str, dict[str, float]] = {
    "happy": {"corner_lift": 1.0, "mouth_width": 1.0},
    "surprised": {"brow_height": 1.0, "mouth_open": 1.0, "eye_open": 1.0},
    "sad": {"corner_lift": -1.0, "brow_height": 0.5, "mouth_width": -0.5},
    "angry": {"brow_height": -1.0, "eye_open": -0.5},
}


@dataclass
class RefChoice:
    """Frame indices of one clip's references, by reference name (global, body_front, expr_happy, ...)."""

    frames: dict[str, int]
    outside_clip: bool  # every reference came from outside the clip's own frames


def colour_signature(crop: np.ndarray) -> np.ndarray:
    """Normalised RGB histogram of a head-and-shoulders crop: hair, skin, clothes and backdrop colours.

    Args:
        crop: (H, W, 3) uint8.
    Returns:
        (3 * SIGNATURE_BINS,) float32 summing to 3.
    """
    q = (crop.reshape(-1, 3).astype(np.int64) * SIGNATURE_BINS) // 256
    hist = np.concatenate([np.bincount(q[:, c], minlength=SIGNATURE_BINS) for c in range(3)]).astype(np.float32)
    return hist / (hist.sum() / 3)


def same_person_shots(signatures: dict[int, np.ndarray], shots: list[tuple[int, int]]) -> np.ndarray:
    """(S, S) bool: shots whose mean colour signatures are close show the same person (a cut to another
    person changes hair, clothes and backdrop; a new angle on the same person changes little)."""
    means = []
    for a, b in shots:
        sig = [signatures[i] for i in range(a, b) if i in signatures]
        means.append(np.mean(sig, axis=0) if sig else None)
    n = len(shots)
    out = np.eye(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i != j and means[i] is not None and means[j] is not None:
                out[i, j] = 0.5 * np.abs(means[i] - means[j]).sum() / 3 < SAME_PERSON_DISTANCE
    return out


class RefPicker:
    """Scores the good frames of one source once; ``pick(start, end)`` chooses references for a clip.

    Args:
        track: the source's face measurements.
        usable: (F,) bool frames that passed the quality filters (the only candidates).
    """

    def __init__(self, track: FaceTrack, usable: np.ndarray, seed: int = 0) -> None:
        self.usable = usable.copy()
        idx = np.flatnonzero(usable)
        self.yaw = track.pose[:, 0]
        expr = track.expression
        eyes = track.eye_open.mean(axis=1)
        blink = eyes < BLINK_FRACTION * (np.median(eyes[idx]) if idx.size else 0.0)
        # Expressions are compared on near-frontal, open-eyed frames: turning the head distorts the features.
        frontal = usable & (np.abs(self.yaw) <= FRONT_MAX_DEG) & (np.abs(track.pose[:, 2]) <= ROLL_MAX_DEG) & ~blink
        mu = np.median(expr[frontal], axis=0) if frontal.any() else np.zeros(expr.shape[1])
        self.z = (expr - mu) / np.array([EXPRESSION_SCALES[f] for f in EXPRESSION_FEATURES])  # (F, E)
        log_sharp = np.log(np.maximum(track.sharpness, 1e-3))
        blur_cost = SHARP_WEIGHT * ((log_sharp[idx].max() if idx.size else 0.0) - log_sharp)
        self.front_cost = (np.abs(track.pose[:, 0]) + np.abs(track.pose[:, 1])) / FRONTAL_SCALE_DEG + blur_cost
        self.front_cost[blink] += 1e3
        self.pose_ok = np.abs(track.pose[:, 2]) <= ROLL_MAX_DEG
        self.labels, self.names, centroids = self._cluster(np.flatnonzero(frontal), seed)
        neutral = centroids[self.names.index("neutral")] if "neutral" in self.names else np.zeros(expr.shape[1])
        self.global_cost = self.front_cost + np.linalg.norm(self.z - neutral, axis=1)
        self.centroid_dist = np.full(len(usable), np.inf)
        for k, c in enumerate(centroids):
            m = self.labels == k
            self.centroid_dist[m] = np.linalg.norm(self.z[m] - c, axis=1) + blur_cost[m]
        opening = np.maximum(self.z[:, EXPRESSION_FEATURES.index("mouth_open")], 0.0)
        self.exemplar_cost = self.centroid_dist + EXPR_MOUTH_OPEN_COST * opening

    def _cluster(self, idx: np.ndarray, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """k-means over scaled expression features; clusters named by template; neutral = nearest the median."""
        labels = np.full(len(self.usable), -1)
        k = min(EXPR_CLUSTERS, idx.size // MIN_FRAMES_PER_CLUSTER)
        if k < 1:
            return labels, [], np.zeros((0, self.z.shape[1]))
        x = self.z[idx]
        rng = np.random.default_rng(seed)
        cent = x[[rng.integers(len(x))]]
        while len(cent) < k:  # k-means++ seeding
            d = np.min(((x[:, None] - cent[None]) ** 2).sum(-1), axis=1)
            cent = np.concatenate([cent, x[[rng.choice(len(x), p=d / d.sum()) if d.sum() > 0 else 0]]])
        for _ in range(KMEANS_ITERS):
            lab = np.argmin(((x[:, None] - cent[None]) ** 2).sum(-1), axis=1)
            cent = np.stack([x[lab == j].mean(0) if (lab == j).any() else cent[j] for j in range(k)])
        labels[idx] = lab
        names = [""] * k
        neutral = int(np.argmin(np.linalg.norm(cent, axis=1)))
        names[neutral] = "neutral"
        offsets = cent - cent[neutral]
        scores = []
        for name, template in EXPRESSION_TEMPLATES.items():
            t = np.array([template.get(f, 0.0) for f in EXPRESSION_FEATURES])
            t /= np.linalg.norm(t)
            scores += [(float(offsets[j] @ t), name, j) for j in range(k) if j != neutral]
        for score, name, j in sorted(scores, reverse=True):  # greedy: best match first, one name per cluster
            if score >= EXPR_MIN_SCORE and not names[j] and name not in names:
                names[j] = name
        return labels, names, cent

    def _best(self, cost: np.ndarray, candidates: np.ndarray) -> int | None:
        c = np.where(candidates, cost, np.inf)
        i = int(np.argmin(c))
        return i if np.isfinite(c[i]) else None

    def pick(self, start: int, end: int, same_person: np.ndarray | None = None) -> RefChoice:
        """References for the clip [start, end): from outside it where the source has such frames.

        Args:
            same_person: (F,) bool frames that show the clip's person (None: every frame does).
        """
        outside = self.usable.copy() if same_person is None else self.usable & same_person
        outside[start:end] = False
        inside = np.zeros_like(self.usable)
        inside[start:end] = self.usable[start:end]
        frames: dict[str, int] = {}
        all_outside = True
        wanted = {
            "global": (self.global_cost, self.pose_ok),
            "body_front": (self.front_cost, self.pose_ok & (np.abs(self.yaw) <= FRONT_MAX_DEG)),
            # Estimated yaw is camera-relative: a face turned to the viewer's left shows the body's left side.
            "body_left": (self.yaw, self.pose_ok & (self.yaw <= -SIDE_MIN_DEG)),
            "body_right": (-self.yaw, self.pose_ok & (self.yaw >= SIDE_MIN_DEG)),
        }
        for k, name in enumerate(self.names):
            if name:
                wanted[f"expr_{name}"] = (self.exemplar_cost, self.labels == k)
        for ref, (cost, ok) in wanted.items():
            i = self._best(cost, outside & ok)
            if i is None:
                i = self._best(cost, inside & ok)
                if i is None:
                    continue
                all_outside = False
            frames[ref] = i
        if "global" not in frames:  # no usable frame at all: the clip's middle frame
            frames["global"] = (start + end) // 2
            all_outside = False
        return RefChoice(frames, all_outside)
