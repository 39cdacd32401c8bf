"""The head base, per pixel: skull, hair and hat shells with the style's shading.

Each pixel in the head's box is mapped back onto the skull sphere and onto the (larger) hair and hat shells
(the inverse of ``HeadFrame.project``). Layers are blended with analytic coverage (distance to an edge over
the pixel size), so the head is anti-aliased while being painted at output resolution: about 5k pixels per
frame at 128x128. The renderer upsamples it onto the 2x canvas, under the features.
"""

from __future__ import annotations

import math

import numpy as np

from lpm.world.identity import Identity
from lpm.world.render_rig import HeadFrame
from lpm.world.render_styles import GRAPHITE, Look

HAT_LIFT = 0.05  # the hat shell sits this far outside the hair (or skull)
SKETCH_PERIOD = 0.022  # hatching line period, fraction of the frame
PHOTO_NOISE = 0.035  # relative amplitude of the photo skin / hair texture
RING_Y, RING_HALF = 0.56, 0.05  # the glossy highlight band of cartoon hair, on the hair shell


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Value noise: random values on a coarse grid, bilinearly upsampled; zero mean, unit-ish range."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = np.arange(shape[0], dtype=np.float32) / cell
    xs = np.arange(shape[1], dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bot = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def shade_curve(mode: str, d: np.ndarray) -> np.ndarray:
    """Shade multiplier for a diffuse term d = n . light, per shading mode."""
    if mode == "photo":
        # Wrapped diffuse: soft falloff into the shadow side, like skin scattering light.
        return 0.5 + 0.55 * np.clip((d + 0.35) * (1 / 1.35), 0.0, 1.0)
    if mode == "cel":
        return np.where(d > 0.08, np.float32(1.0), np.float32(0.8))
    if mode == "metal":
        # Brushed-metal bands over a plain diffuse term.
        return 0.45 + 0.5 * np.clip(d, 0.0, 1.0) + 0.1 * np.cos(d * 9.0)
    return 0.52 + 0.55 * np.clip(d, 0.0, 1.0)


def _cov(signed: np.ndarray, inv_px: float) -> np.ndarray:
    """Coverage of a pixel by the region signed > 0, where inv_px converts the field to pixels."""
    v = signed * np.float32(inv_px)
    v += 0.5
    np.maximum(v, 0.0, out=v)  # in place: np.clip's Python wrapper costs more than the maths here
    return np.minimum(v, 1.0, out=v)


def _rgb(c) -> np.ndarray:
    return np.array(c, dtype=np.float32)


class HeadPainter:
    """Paints the head base for one identity at one output size; caches its textures."""

    def __init__(self, ident: Identity, look: Look, res: int, supersample: int):
        self.look, self.res, self.ss = look, res, supersample
        hair = look.hair_shape
        self.hair_shell = hair.shell if hair else 1.0
        self.hat = ident.hat
        self.hat_shell = {
            "beanie": self.hair_shell + HAT_LIFT,
            "cap": self.hair_shell + HAT_LIFT,
            "headband": self.hair_shell + 0.01,
        }.get(ident.hat, 0.0)
        self.max_shell = max(self.hair_shell, self.hat_shell, 1.0)
        rng = np.random.default_rng([ident.seed & 0xFFFFFFFF, 7])
        if look.mode == "photo":
            fine = _smooth_noise(rng, (res, res), max(1, res // 96))
            coarse = _smooth_noise(rng, (res, res), max(3, res // 20))
            self.texture = (1.0 + PHOTO_NOISE * (0.6 * fine + 0.4 * coarse)).astype(np.float32)
        elif look.mode == "sketch":
            yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
            period = max(2.5, SKETCH_PERIOD * res)
            wobble = _smooth_noise(rng, (res, res), max(4, res // 16)) * 0.15
            # Two families of hatching lines as a 0..1 sawtooth; a pixel is inked where the sawtooth is
            # below the local darkness, so darker tones give thicker lines.
            self.hatch_a = np.abs(((xx + yy) / period + wobble) % 1.0 - 0.5) * 2.0
            self.hatch_b = np.abs(((xx - 0.6 * yy) / period + wobble) % 1.0 - 0.5) * 2.0
            self.paper = _rgb(ident.background_rgb)
        self.skin, self.alt = _rgb(look.skin), _rgb(look.skin_alt)
        self.hair, self.hair_hi = _rgb(look.hair), _rgb(look.hair_hi)
        self.hat_rgb, self.band_rgb, self.ink = _rgb(look.hat), _rgb(look.hat_band), _rgb(look.ink)

    def tone(self, f: HeadFrame, point: np.ndarray) -> tuple[int, int, int]:
        """The shaded skin colour at a local point of the skull (for decals that must match the head)."""
        v = f.m @ (point / np.linalg.norm(point))
        shade = float(shade_curve(self.look.mode, np.float32(v @ f.light)))
        return tuple(int(min(255, c * shade)) for c in self.look.skin)

    def paint(self, f: HeadFrame, flush: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Paint the head base at output resolution.

        Args:
            f: the head placement this frame (canvas pixels).
            flush: 0..1 angry redness of the skin.
        Returns:
            rgb (h, w, 3) uint8, alpha (h, w) uint8, and the box origin (x0, y0) in output pixels.
        """
        look, ss = self.look, self.ss
        c, s = f.tilt_cos, f.tilt_sin
        b = max(f.b_up, f.b_lo)
        half_w = self.max_shell * math.hypot(f.a * c, b * s) + 2 * ss
        half_h = self.max_shell * math.hypot(f.a * s, b * c) + 2 * ss
        x0, x1 = max(0, int((f.cx - half_w) / ss)), min(self.res, int(math.ceil((f.cx + half_w) / ss)))
        y0, y1 = max(0, int((f.cy - half_h) / ss)), min(self.res, int(math.ceil((f.cy + half_h) / ss)))
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) * ss - np.float32(f.cx)
        ys = np.float32(f.cy) - (np.arange(y0, y1, dtype=np.float32) + 0.5) * ss
        c32, s32 = np.float32(c), np.float32(s)
        ex = xs[None, :] * c32 - ys[:, None] * s32  # (h, w) de-tilted offsets, canvas pixels
        ey = xs[None, :] * s32 + ys[:, None] * c32
        inv_up, inv_lo = np.float32(1.0 / f.b_up), np.float32(1.0 / f.b_lo)
        yn = ey * inv_up + np.minimum(ey, 0) * (inv_lo - inv_up)
        t = np.maximum(-yn, 0)
        xn = ex * np.float32(1.0 / f.a) / (1.0 - np.float32(f.taper) * t * t)
        r2 = xn * xn + yn * yn
        r = np.sqrt(r2)
        zs = np.sqrt(np.maximum(1.0 - r2, 0.0))
        inv_px = f.a / ss  # unit-head lengths -> output pixels
        lx, ly, lz = (float(v) for v in f.light)
        m = f.m.astype(np.float32)
        skull = _cov(1.0 - r, inv_px)
        d_skin = xn * lx + yn * ly + zs * lz
        sketch = look.mode == "sketch"
        ink = r if (look.outline or sketch) else None  # placeholder, replaced below

        if sketch:
            tone = np.clip(0.45 - d_skin, 0.0, 1.0) * 0.9  # graphite darkness
            col = None
        else:
            skin = self.skin if flush <= 0 else self.skin + (_rgb((230, 70, 70)) - self.skin) * (0.2 * flush)
            col = shade_curve(look.mode, d_skin)[..., None] * skin
            if look.kind in ("animal", "robot"):
                sx = m[0, 0] * xn + m[1, 0] * yn + m[2, 0] * zs  # skull-local coordinates
                sy = m[0, 1] * xn + m[1, 1] * yn + m[2, 1] * zs
                sz = m[0, 2] * xn + m[1, 2] * yn + m[2, 2] * zs
                if look.kind == "animal":
                    alt = _cov(1.0 - sx * sx * 5.6 - (sy + 0.44) ** 2 * 11.0, inv_px * 0.25) * (sz > 0)
                else:
                    alt = _cov(
                        np.minimum(np.minimum(sz - 0.5, 0.62 - np.abs(sy + 0.05)), 0.72 - np.abs(sx)), inv_px
                    )
                col += (shade_curve(look.mode, d_skin)[..., None] * self.alt - col) * alt[..., None]
            if look.mode == "photo":
                col *= self.texture[y0:y1, x0:x1, None]
        if ink is not None:
            ink = _cov(r - (1.0 - max(look.outline, 0.03)), inv_px) * skull
        alpha = skull

        hs = look.hair_shape
        if hs is not None:
            k = np.float32(1.0 / hs.shell)
            zh = np.sqrt(np.maximum(1.0 - r2 * (k * k), 0.0))
            hx = (m[0, 0] * xn + m[1, 0] * yn) * k + m[2, 0] * zh
            hy = (m[0, 1] * xn + m[1, 1] * yn) * k + m[2, 1] * zh
            hz = (m[0, 2] * xn + m[1, 2] * yn) * k + m[2, 2] * zh
            front = hs.front + hs.part * hx if hs.part else hs.front
            if hs.zig:
                front = front + hs.zig * (np.abs((hx * hs.zig_n) % 1.0 - 0.5) * 2.0)
            tz = np.clip((hz + 0.65) * (1.0 / 0.75), 0.0, 1.0)  # 1 over the face and temples, 0 at the back
            line = hs.back + (front - hs.back) * tz
            side = np.clip((np.abs(hx) - 0.7) * (1.0 / 0.15), 0.0, 1.0)
            line = line + (np.minimum(line, hs.sides) - line) * side
            inv_hpx = inv_px * hs.shell
            region = hy - line
            if hs.strip:
                region = np.minimum(region, hs.strip - np.abs(hx))
            hair = _cov(region, inv_hpx) * _cov(hs.shell - r, inv_px)
            d_hair = (xn * lx + yn * ly) * k + zh * lz
            alpha = np.maximum(alpha, hair)
            if sketch:
                hair_tone = 0.35 + 0.4 * np.clip(-d_hair, 0, 1)
                tone = tone + (np.maximum(tone, hair_tone) - tone) * hair
            else:
                hcol = shade_curve(look.mode, d_hair)[..., None] * self.hair
                if look.mode in ("cel", "toon"):
                    ring = _cov(RING_HALF - np.abs(hy - RING_Y), inv_hpx) * (hz > 0.25) * (np.abs(hx) < 0.75)
                    hcol += (self.hair_hi - hcol) * (0.8 * ring)[..., None]
                elif look.mode == "photo":
                    hcol *= 1.0 + 0.08 * np.sin(hx * 60.0 + hy * 9.0)[..., None]  # strands
                col += (hcol - col) * hair[..., None]
            if ink is not None:
                w = max(look.outline, 0.03)
                rim = _cov(r - hs.shell * (1.0 - w), inv_px) * hair
                fringe = _cov(line + 1.5 * w - hy, inv_hpx) * hair * skull
                ink = ink * (1.0 - hair) + np.maximum(rim, fringe)  # hair covers the skull's outline
            d_skin = d_skin + (d_hair - d_skin) * hair  # for the specular term

        if self.hat_shell:
            k = np.float32(1.0 / self.hat_shell)
            zt = np.sqrt(np.maximum(1.0 - r2 * (k * k), 0.0))
            ty = (m[0, 1] * xn + m[1, 1] * yn) * k + m[2, 1] * zt
            tz = (m[0, 2] * xn + m[1, 2] * yn) * k + m[2, 2] * zt
            inv_tpx = inv_px * self.hat_shell
            inside = _cov(self.hat_shell - r, inv_px)
            d_hat = (xn * lx + yn * ly) * k + zt * lz
            if self.hat == "headband":
                lo = 0.3 + 0.12 * tz
                hat = _cov(np.minimum(ty - lo, lo + 0.13 - ty), inv_tpx) * inside * np.maximum(alpha, tz < 0)
                band = hat
            else:
                lo = (0.3 if self.hat == "beanie" else 0.42) + 0.2 * tz
                hat = _cov(ty - lo, inv_tpx) * inside
                band = hat * _cov(lo + (0.13 if self.hat == "beanie" else 0.07) - ty, inv_tpx)
            alpha = np.maximum(alpha, hat)
            if sketch:
                tone = tone + (np.maximum(tone, 0.5 + 0.3 * np.clip(-d_hat, 0, 1)) - tone) * hat
            else:
                band_mix = self.hat_rgb + (self.band_rgb - self.hat_rgb) * band[..., None]
                hat_col = shade_curve(look.mode, d_hat)[..., None] * band_mix
                col += (hat_col - col) * hat[..., None]
            if ink is not None:
                rim = _cov(r - self.hat_shell * (1.0 - max(look.outline, 0.03)), inv_px) * hat
                ink = ink * (1.0 - hat) + rim

        if sketch:
            rgb = self._sketch(tone, ink, y0, y1, x0, x1)
        else:
            if look.mode in ("toon", "metal"):
                hx_, hy_, hz_ = 0.3 * lx, 0.3 * ly, 0.3 * lz + 0.7  # half vector towards a front viewer
                norm = math.sqrt(hx_ * hx_ + hy_ * hy_ + hz_ * hz_)
                nh = (xn * hx_ + yn * hy_ + zs * hz_) * np.float32(1.0 / norm)
                power, gain = (40, 110.0) if look.mode == "toon" else (12, 150.0)
                col += (np.maximum(nh, 0) ** power * np.float32(gain))[..., None]
            if ink is not None and look.outline:
                col += (self.ink - col) * ink[..., None]
            rgb = np.clip(col, 0, 255).astype(np.uint8)
        return rgb, (alpha * 255).astype(np.uint8), (x0, y0)

    def _sketch(self, tone, edge, y0, y1, x0, x1) -> np.ndarray:
        """Graphite on paper: hatching whose density follows the tone, plus the outlines."""
        ink = (self.hatch_a[y0:y1, x0:x1] < tone) * np.float32(0.5)
        ink = np.maximum(ink, (self.hatch_b[y0:y1, x0:x1] < tone - 0.3) * np.float32(0.5))
        ink = np.maximum(ink, edge * np.float32(0.9))
        graphite = _rgb(GRAPHITE)
        return (self.paper + (graphite - self.paper) * ink[..., None]).astype(np.uint8)
