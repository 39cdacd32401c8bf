"""Parts that stick out of the head: ears, antennae, horns, buns, spikes, long hair, a cap's brim.

Each part is a small 3D outline in head-local coordinates, fixed per identity; per frame all of them are
projected in one call. A part reports its view depth so the renderer draws it behind the head (before the
head is painted) or in front of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from lpm.world.identity import Identity
from lpm.world.render_rig import HeadFrame
from lpm.world.render_styles import GOLD, GRAPHITE, INK, Look, _mix, _scale

_ANGLES = np.linspace(0, 2 * np.pi, 14, endpoint=False)
_COS, _SIN = np.cos(_ANGLES), np.sin(_ANGLES)
FRONT_Z = 0.3  # parts whose centre is nearer than this (view depth, unit head) are drawn over the head
INNER_VISIBLE_Z = 0.1  # an ear's inner detail shows only when the ear faces the viewer


@dataclass(frozen=True)
class Part:
    """A projected part: its centre's view depth and how to draw it."""

    z: float
    draw: Callable[[ImageDraw.ImageDraw], None]


@dataclass(frozen=True)
class _Def:
    """A part in head-local coordinates: 'poly' (filled outline), 'stalk' (antenna) or 'hoop' (earring)."""

    kind: str
    pts: np.ndarray  # (N, 3)
    fill: tuple
    inner: np.ndarray | None = None  # (M, 3) detail drawn inside when facing the viewer
    inner_fill: tuple | None = None
    shade_back: bool = True  # darken when seen from behind
    long_hair: bool = False


def _ring(centre, u, v) -> np.ndarray:
    """(14, 3) points of the ellipse centre + cos*u + sin*v."""
    return (
        np.asarray(centre, float)
        + _COS[:, None] * np.asarray(u, float)
        + _SIN[:, None] * np.asarray(v, float)
    )


def _shrink(pts: np.ndarray, k: float) -> np.ndarray:
    centre = pts.mean(axis=0)
    return centre + (pts - centre) * k


class PartPainter:
    """One identity's parts; ``parts(frame)`` projects and returns them at a pose."""

    def __init__(self, ident: Identity, look: Look):
        self.ident, self.look = ident, look
        self.sketch = look.mode == "sketch"
        self.outline = GRAPHITE if self.sketch else INK
        self.edge = self.sketch or look.outline > 0
        self.shell = look.hair_shape.shell if look.hair_shape else 1.0
        self.defs = self._ears() + self._hair() + self._hat()
        chunks = [d.pts for d in self.defs] + [d.inner for d in self.defs if d.inner is not None]
        self.all_pts = np.concatenate(chunks) if chunks else np.zeros((0, 3))

    def _ears(self) -> list[_Def]:
        ident, look = self.ident, self.look
        skin, alt = look.skin, look.skin_alt
        out = []
        for side in (1.0, -1.0):
            ears = ident.ears
            if ears in ("round", "pointed"):
                # An ear is a plate facing sideways and flaring out: whole in profile, edge-on from the front.
                c = np.array([1.0 * side, -0.06, -0.1])
                u, v = np.array([0, 0.22, 0]), np.array([0.1 * side, 0, -0.13])
                ring = _ring(c, u, v)
                if ears == "pointed":
                    ring[2] = [1.28 * side, 0.32, -0.22]
                inner = _ring(c + [0.02 * side, 0, 0.02], u * 0.55, v * 0.5)
                out.append(_Def("poly", ring, _scale(skin, 0.92), inner, _scale(skin, 0.68)))
                if ident.earrings:
                    hoop = _ring([1.0 * side, -0.34, -0.02], [0, 0.07, 0], [0.04 * side, 0, 0.03])
                    out.append(_Def("hoop", hoop, GOLD))
            elif ears == "cat":
                tri = np.array([[0.3 * side, 0.86, 0.1], [0.84 * side, 1.32, -0.05], [0.82 * side, 0.5, 0.0]])
                out.append(_Def("poly", tri, skin, _shrink(tri + [0.04 * side, 0.0, 0.03], 0.55), alt))
            elif ears == "bear":
                c = np.array([0.7 * side, 0.8, -0.05])
                out.append(
                    _Def(
                        "poly",
                        _ring(c, [0.3, 0, 0], [0, 0.3, 0]),
                        skin,
                        _ring(c + [0, 0, 0.02], [0.16, 0, 0], [0, 0.16, 0]),
                        alt,
                    )
                )
            elif ears == "bunny":
                c = np.array([0.36 * side, 1.38, -0.05])
                out.append(
                    _Def(
                        "poly",
                        _ring(c, [0.17, 0, 0], [0.04 * side, 0.6, 0]),
                        skin,
                        _ring(c + [0, 0, 0.02], [0.08, 0, 0], [0, 0.45, 0]),
                        alt,
                    )
                )
            elif ears == "dog":
                c = np.array([0.9 * side, 0.1, 0.35])
                out.append(
                    _Def(
                        "poly",
                        _ring(c, [0.2, 0, 0.05 * side], [0.05 * side, 0.5, 0]),
                        _scale(skin, 0.7),
                        shade_back=False,
                    )
                )
            elif ears == "antennae":
                out.append(
                    _Def(
                        "stalk",
                        np.array([[0.3 * side, 0.92, 0.0], [0.58 * side, 1.6, 0.0]]),
                        ident.accent_rgb,
                    )
                )
            elif ears == "horns":
                tri = np.array([[0.3 * side, 0.9, 0.1], [0.58 * side, 1.45, 0.0], [0.62 * side, 0.78, 0.0]])
                out.append(_Def("poly", tri, (240, 230, 200)))
            elif ears == "bolts":
                c = np.array([1.03 * side, 0.0, 0.0])
                out.append(
                    _Def(
                        "poly",
                        _ring(c, [0, 0.18, 0], [0, 0, 0.18]),
                        _scale(skin, 0.8),
                        _ring(c + [0.02 * side, 0, 0], [0, 0.08, 0], [0, 0, 0.08]),
                        ident.accent_rgb,
                    )
                )
        return out

    def _hair(self) -> list[_Def]:
        ident, hair, s = self.ident, self.look.hair, self.shell
        style = ident.hair_style
        out = []
        if style == "bun":
            out.append(
                _Def("poly", _ring(np.array([0.0, 0.82, -0.5]) * s, [0.36, 0, 0], [0, 0.33, 0.1]), hair)
            )
        elif style == "pigtails":
            for side in (1.0, -1.0):
                tail = np.array(
                    [
                        [0.95, 0.2, -0.3],
                        [1.35, 0.05, -0.3],
                        [1.3, -0.8, -0.3],
                        [1.12, -1.05, -0.3],
                        [1.0, -0.6, -0.3],
                    ]
                ) * [side, 1, 1]
                out.append(_Def("poly", tail, _scale(hair, 0.9)))
                tie = _ring([1.12 * side, 0.1, -0.2], [0.14, 0, 0], [0, 0.1, 0])
                out.append(_Def("poly", tie, ident.accent_rgb))
        elif style == "spiky":
            for ang in np.radians([-70, -40, -12, 15, 45, 75]):
                base = (
                    np.array(
                        [
                            [np.sin(ang - 0.22), np.cos(ang - 0.22), -0.25],
                            [np.sin(ang + 0.22), np.cos(ang + 0.22), -0.25],
                        ]
                    )
                    * s
                    * 0.95
                )
                tip = np.array([[np.sin(ang * 1.2) * 1.5, np.cos(ang * 1.2) * 1.45, -0.3]]) * s
                out.append(_Def("poly", np.concatenate([base, tip]), hair))
        elif style == "long":
            pts = np.array(
                [
                    [0.92, 0.3, -0.3],
                    [1.08, -0.6, -0.25],
                    [1.12, -1.5, -0.2],
                    [0.55, -1.68, -0.45],
                    [0.0, -1.72, -0.5],
                    [-0.55, -1.68, -0.45],
                    [-1.12, -1.5, -0.2],
                    [-1.08, -0.6, -0.25],
                    [-0.92, 0.3, -0.3],
                    [0.0, 0.7, -0.85],
                ]
            ) * [s, 1.0, s]
            out.append(_Def("poly", pts, _mix(hair, (0, 0, 0), 0.15), shade_back=False, long_hair=True))
        return out

    def _hat(self) -> list[_Def]:
        if self.ident.hat != "cap":
            return []
        arc = np.linspace(-1.3, 1.3, 11)
        s = self.shell + 0.05
        inner = np.column_stack([np.sin(arc) * 0.93 * s, np.full_like(arc, 0.42 * s), np.cos(arc) * 0.93 * s])
        # The brim tilts down at its edge so that it reads from the front, not only from above.
        outer = inner * [1.05, 1.0, 1.0] + np.column_stack([0 * arc, -0.16 + 0 * arc, 0.5 * np.cos(arc)])
        return [
            _Def(
                "poly",
                np.concatenate([inner, outer[::-1]]),
                _scale(self.ident.hat_rgb, 0.8),
                shade_back=False,
            )
        ]

    def parts(self, f: HeadFrame) -> tuple[list[Part], Part | None]:
        """Every part at this head placement, sorted far to near, and the long hair (or None) apart."""
        if not self.defs:
            return [], None
        xy, z = f.project(self.all_pts)
        width = max(1, int(round(0.03 * f.a))) if self.edge else 0
        out, long_hair, start = [], None, 0
        inner_start = sum(len(d.pts) for d in self.defs)
        for d in self.defs:
            n = len(d.pts)
            pxy, zc = xy[start : start + n], float(z[start : start + n].mean())
            start += n
            inner = None
            if d.inner is not None:
                m = len(d.inner)
                if z[inner_start : inner_start + m].mean() > INNER_VISIBLE_Z:
                    inner = xy[inner_start : inner_start + m].ravel().tolist()
                inner_start += m
            part = Part(zc, self._drawer(d, pxy, zc, inner, width, f.a))
            if d.long_hair:
                long_hair = part
            else:
                out.append(part)
        out.sort(key=lambda p: p.z)
        return out, long_hair

    def _drawer(self, d: _Def, xy: np.ndarray, zc: float, inner, width: int, a: float):
        flat = xy.ravel().tolist()
        if d.kind == "stalk":
            stalk = GRAPHITE if self.sketch else _scale(self.look.skin, 0.6)
            tip = self.ident.background_rgb if self.sketch else d.fill
            w, r = max(1, int(round(0.05 * a))), 0.11 * a
            x1, y1 = flat[2], flat[3]

            def draw_stalk(dr):
                dr.line(flat, fill=stalk, width=w)
                dr.ellipse(
                    (x1 - r, y1 - r, x1 + r, y1 + r), fill=tip, outline=self.outline, width=max(1, w // 2)
                )

            return draw_stalk
        if d.kind == "hoop":
            ring = flat + flat[:2]
            colour = GRAPHITE if self.sketch else d.fill
            w = max(1, int(round(0.025 * a)))
            return lambda dr: dr.line(ring, fill=colour, width=w)
        fill = d.fill
        if self.sketch:
            fill = self.ident.background_rgb
        elif d.shade_back and zc < 0:
            fill = _scale(fill, 0.85)
        inner_fill = GRAPHITE if self.sketch else d.inner_fill
        edge = _scale(fill, 0.7)  # a soft rim where a style has no ink outlines

        def draw_poly(dr):
            dr.polygon(flat, fill=fill, outline=self.outline if width else edge, width=width or 1)
            if inner is not None:
                dr.polygon(inner, fill=inner_fill)

        return draw_poly
