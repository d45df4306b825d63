"""Procedural face drawing for the synthetic expression set (numpy + OpenCV drawing, no assets).

:func:`draw_face` renders one RGB image ``[S, S, 3] uint8`` of a cartoon face showing one expression. Every random
choice comes from the ``numpy.random.Generator`` it is given, so an image is a pure function of that generator's
state. Geometry is written in face-local units: ``u`` across the face (−1 … 1 = left … right edge of the face
ellipse), ``v`` down the face (−1 … 1 = top … chin); positive ``v`` offsets move a feature down.

Expression geometry (the learnable signal), as deviations from a neutral face:
    happy     mouth corners up (closed or open with teeth), cheek folds, squinted eyes
    sad       mouth corners down, inner brow ends raised / outer ends lowered, drooping lids
    surprise  round open mouth, high arched brows, wide eyes, forehead lines
    fear      brows raised and drawn together, wide eyes, wide stretched open mouth, forehead lines
    disgust   nose wrinkles, raised upper lip showing teeth, lowered brows, squint
    anger     lowered V brows drawn together, frown lines between them, narrowed eyes, pressed lips
    contempt  one mouth corner raised (8-class sets only)
Nuisance variation: identity (face shape, jaw, skin tone, hair, eye/mouth placement, glasses), pose (rotation,
scale, offset, a little yaw, mirror), lighting gradient and colour cast, background clutter, blur, noise, and
partial occlusion by a hand-like blob or a bar.
"""
from __future__ import annotations

import functools
import math

import numpy as np

_SHIFT = 4  # cv2 sub-pixel bits: coordinates are passed as round(x * 16)
_ONE = 1 << _SHIFT

SKIN_TONES = np.array([(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 90), (160, 105, 65),
                       (120, 78, 50), (88, 57, 38)], np.float32)
HAIR_COLOURS = np.array([(20, 16, 14), (55, 35, 22), (95, 62, 35), (165, 125, 75), (210, 180, 120),
                         (140, 60, 30), (150, 150, 150)], np.float32)
IRIS_COLOURS = np.array([(70, 45, 25), (40, 25, 15), (60, 100, 150), (80, 110, 70), (110, 90, 60)], np.float32)

# Expression parameters as (neutral value, expression value) deltas; missing keys keep the neutral value.
#   brow_in / brow_out: vertical offset of the inner / outer brow end (v units, + = down); brow_arch: middle lift;
#   brow_pull: inner ends moved toward the midline (u units); eye_open: lid opening / eye half-width;
#   eye_tilt: inner corner of the upper lid lowered (+) or outer corner lowered (−);
#   mouth_w: width factor; lift_l / lift_r: corner lift (v units, + = up); open_top / open_bot: opening above /
#   below the lip line (v units); open_pow: opening profile (0.5 round … 1 parabolic … <0.5 boxy); lip: lip
#   thickness factor.
NEUTRAL = dict(brow_in=0.0, brow_out=0.0, brow_arch=0.03, brow_pull=0.0, eye_open=0.48, eye_tilt=0.0,
               mouth_w=1.0, lift_l=0.0, lift_r=0.0, open_top=0.0, open_bot=0.0, open_pow=1.0, lip=1.0)

EXPRESSION_PARAMS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": dict(brow_in=-0.02, brow_out=-0.02, brow_arch=0.05, eye_open=0.30, mouth_w=1.18, lift_l=0.11,
                  lift_r=0.11),
    "sad": dict(brow_in=-0.11, brow_out=0.05, brow_arch=-0.03, eye_open=0.36, eye_tilt=-0.45, mouth_w=0.88,
                lift_l=-0.10, lift_r=-0.10, lip=0.8),
    "surprise": dict(brow_in=-0.16, brow_out=-0.13, brow_arch=0.09, eye_open=0.88, mouth_w=0.55,
                     open_top=0.11, open_bot=0.14, open_pow=0.5, lip=0.8),
    "fear": dict(brow_in=-0.15, brow_out=-0.05, brow_arch=0.0, brow_pull=0.07, eye_open=0.82, mouth_w=1.28,
                 lift_l=-0.04, lift_r=-0.04, open_top=0.035, open_bot=0.06, open_pow=0.35, lip=0.6),
    "disgust": dict(brow_in=0.06, brow_out=0.01, brow_pull=0.03, eye_open=0.26, mouth_w=0.95, lift_l=-0.05,
                    lift_r=-0.05, open_top=0.07, open_bot=0.015, open_pow=0.7),
    "anger": dict(brow_in=0.12, brow_out=-0.05, brow_arch=0.0, brow_pull=0.08, eye_open=0.30, eye_tilt=0.5,
                  mouth_w=0.78, lift_l=-0.025, lift_r=-0.025, lip=0.2),
    "contempt": dict(lift_r=0.14, mouth_w=1.05, eye_open=0.42),
}


@functools.lru_cache(maxsize=64)
def _lin(start: float, stop: float, num: int, dtype=np.float64) -> np.ndarray:
    """``np.linspace``, cached and read-only (the drawing reuses a few fixed grids thousands of times)."""
    out = np.linspace(start, stop, num, dtype=dtype)
    out.flags.writeable = False
    return out


def _pts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → int32 points for cv2 with ``shift=_SHIFT``; shape [N, 2]."""
    xy = np.array((x, y), np.float64).T * _ONE
    return np.rint(xy, out=xy).astype(np.int32)


def _pt(x, y) -> tuple[int, int]:
    """One float point → a cv2 ``shift=_SHIFT`` point of Python ints (older OpenCV rejects numpy scalars)."""
    return int(round(float(x) * _ONE)), int(round(float(y) * _ONE))


def _col(c) -> tuple[int, int, int]:
    return tuple(int(min(255.0, max(0.0, float(v)))) for v in c[:3])


class _Face:
    """Maps face-local (u, v) to canvas pixels; yaw shifts and compresses the features, not the outline."""

    def __init__(self, cx: float, cy: float, a: float, b: float, yaw: float):
        self.cx, self.cy, self.a, self.b, self.yaw = cx, cy, a, b, yaw
        self._squeeze, self._shift = 1.0 - 0.25 * abs(yaw), 0.35 * yaw

    def xy(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        x = self.cx + self.a * (u * self._squeeze + self._shift * (1.0 - 0.5 * v * v))
        return x, self.cy + self.b * v

    def pts(self, u, v) -> np.ndarray:
        return _pts(*self.xy(u, v))


def _params(expression: str, rng: np.random.Generator, d: float = 1.0) -> dict[str, float]:
    """Neutral + intensity × (expression − neutral), with per-parameter jitter for identity."""
    target = EXPRESSION_PARAMS[expression]
    intensity = rng.uniform(1.0 - 0.35 * d, 1.0)  # weaker expressions only at higher difficulty
    p = {}
    for k, neutral in NEUTRAL.items():
        p[k] = neutral + intensity * (target.get(k, neutral) - neutral)
    p["brow_in"] += rng.normal(0, 0.012)
    p["brow_out"] += rng.normal(0, 0.012)
    p["brow_arch"] += rng.normal(0, 0.01)
    p["eye_open"] *= rng.uniform(0.9, 1.1)
    p["mouth_w"] *= rng.uniform(0.9, 1.1)
    # always draw these, so every expression consumes the same random numbers: the same generator state then
    # gives the same identity, pose and background whatever the expression
    open_smile, open_size, smirk_side = rng.random(), rng.uniform(0.07, 0.12), rng.random()
    if expression == "happy" and open_smile < 0.55:  # open smile showing the upper teeth
        p.update(open_top=0.015, open_bot=open_size, open_pow=0.8)
    if expression == "contempt" and smirk_side < 0.5:
        p["lift_l"], p["lift_r"] = p["lift_r"], p["lift_l"]
    return p


def _plane(angle: float) -> np.ndarray:
    """A unit linear ramp in direction ``angle`` sampled at the 2×2 corners: [2, 2]."""
    grid = np.array([-1.0, 1.0])
    return math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]


def _corners_to_uint8(base: np.ndarray, amp: np.ndarray, angle: float) -> np.ndarray:
    """2×2 RGB corner colours of ``base + amp · ramp``; a bilinear resize spreads them into a linear gradient."""
    return np.clip(base + _plane(angle)[..., None] * amp, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, s: int, d: float = 1.0) -> np.ndarray:
    import cv2

    base = rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(-40, 40, 3)
    img = cv2.resize(_corners_to_uint8(base, amp, angle), (s, s), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(round(int(rng.integers(3, 11)) * d))):
        colour = _col(rng.uniform(0, 255, 3))
        kind = rng.integers(0, 4)
        x0, y0 = rng.uniform(-0.1, 1.1, 2) * s
        r = rng.uniform(0.05, 0.35) * s
        if kind == 0:
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + r), int(y0 + r * rng.uniform(0.3, 2))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (int(x0), int(y0)), int(r * 0.6), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            x1, y1 = rng.uniform(-0.1, 1.1, 2) * s
            cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            poly = (np.array([x0, y0]) + rng.uniform(-r, r, (int(rng.integers(3, 6)), 2))).astype(np.int32)
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA)
    if rng.random() < 0.6:  # out-of-focus background
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.5))
    return img


def _eye(img, f: _Face, side: int, p, ident, skin, line) -> None:
    import cv2

    cu, cv_ = side * ident["eye_x"], ident["eye_y"]
    ew = ident["eye_w"]                                        # half-width in u units
    eh = ew * p["eye_open"] * f.a / f.b                         # half-height in v units (same pixels as u)
    t = _lin(-1.0, 1.0, 15)
    inner = -side * t  # +1 at the inner corner (toward the midline)
    upper = cv_ - eh * (1 - t ** 2) ** 0.6 + p["eye_tilt"] * eh * 0.5 * (inner + 1) * (1 - 0.5 * t ** 2) * 0.6
    lower = cv_ + eh * 0.75 * (1 - t ** 2) ** 0.8
    upper = np.minimum(upper, lower - 0.004)
    us = cu + ew * t
    poly = np.concatenate([f.pts(us, upper), f.pts(us[::-1], lower[::-1])])
    cv2.fillPoly(img, [poly], (245, 245, 240), cv2.LINE_AA, _SHIFT)
    # iris + pupil, then skin-coloured lids above / below the lid curves clip them to the eye opening
    r = ew * 0.42 * f.a
    gx, gy = f.xy(cu + ident["gaze"] * ew * 0.3, cv_ + 0.1 * eh)
    cv2.circle(img, _pt(gx, gy), int(r * _ONE), ident["iris"], -1, cv2.LINE_AA, _SHIFT)
    cv2.circle(img, _pt(gx, gy), int(r * 0.45 * _ONE), (15, 12, 10), -1, cv2.LINE_AA, _SHIFT)
    cv2.circle(img, _pt(gx - r * 0.3, gy - r * 0.3), int(r * 0.18 * _ONE), (250, 250, 250), -1,
               cv2.LINE_AA, _SHIFT)
    pad = (r + 3.0) / f.b
    lid_top = np.concatenate([f.pts(us, upper), f.pts([cu + ew * 1.05, cu - ew * 1.05], [cv_ - pad] * 2)])
    lid_bot = np.concatenate([f.pts(us, lower), f.pts([cu + ew * 1.05, cu - ew * 1.05], [cv_ + pad] * 2)])
    cv2.fillPoly(img, [lid_top, lid_bot], skin, cv2.LINE_AA, _SHIFT)
    thick = max(1, round(f.a * 0.035))
    cv2.polylines(img, [f.pts(us, upper)], False, line, thick, cv2.LINE_AA, _SHIFT)
    cv2.polylines(img, [f.pts(us[2:-2], lower[2:-2])], False, _col(np.array(skin) * 0.7), 1, cv2.LINE_AA, _SHIFT)


def _brow(img, f: _Face, side: int, p, ident, colour) -> None:
    import cv2

    inner_u = side * (ident["brow_gap"] - p["brow_pull"])
    outer_u = side * (ident["eye_x"] + ident["eye_w"] * 1.25)
    base = ident["eye_y"] - ident["brow_h"]
    t = _lin(0.0, 1.0, 9)  # 0 = inner end, 1 = outer end
    u = inner_u + (outer_u - inner_u) * t
    v = base + p["brow_in"] * (1 - t) + p["brow_out"] * t - p["brow_arch"] * 4 * t * (1 - t)
    thick = ident["brow_thick"] * f.b * (1.0 - 0.45 * t)  # tapered toward the outer end
    x, y = f.xy(u, v)
    top = _pts(x, y - thick / 2)
    bottom = _pts(x, y + thick / 2)
    cv2.fillPoly(img, [np.concatenate([top, bottom[::-1]])], colour, cv2.LINE_AA, _SHIFT)


def _mouth(img, f: _Face, p, ident, skin, line) -> None:
    import cv2

    mw = ident["mouth_w"] * p["mouth_w"]
    mv = ident["mouth_y"]
    u = _lin(-1.0, 1.0, 25)
    lift = np.where(u < 0, p["lift_l"], p["lift_r"])
    mid = mv - lift * u ** 2                                   # the lip line; corners follow the lift
    prof = np.clip(1 - u ** 2, 0, 1)
    lip_col = _col(ident["lip"])
    up_lip = ident["lip_t"] * p["lip"] * prof ** 0.5
    lo_lip = ident["lip_t"] * p["lip"] * 1.3 * prof ** 0.6
    opened = p["open_top"] + p["open_bot"] > 0.01
    top = mid - p["open_top"] * prof ** p["open_pow"]
    bot = mid + p["open_bot"] * prof ** p["open_pow"]
    us = u * mw
    # lips first (upper band above the opening, lower band below it)
    cv2.fillPoly(img, [np.concatenate([f.pts(us, top - up_lip), f.pts(us[::-1], top[::-1])]),
                       np.concatenate([f.pts(us, bot), f.pts(us[::-1], (bot + lo_lip)[::-1])])],
                 lip_col, cv2.LINE_AA, _SHIFT)
    if opened:
        cv2.fillPoly(img, [np.concatenate([f.pts(us, top), f.pts(us[::-1], bot[::-1])])], (60, 20, 25),
                     cv2.LINE_AA, _SHIFT)
        teeth = np.minimum(top + 0.035, bot)                   # upper teeth band under the upper lip
        if p["open_pow"] >= 0.6:
            cv2.fillPoly(img, [np.concatenate([f.pts(us[3:-3], top[3:-3]), f.pts(us[-4:2:-1], teeth[-4:2:-1])])],
                         (235, 232, 220), cv2.LINE_AA, _SHIFT)
        cv2.polylines(img, [np.concatenate([f.pts(us, top), f.pts(us[::-1], bot[::-1])])], True, line, 1,
                      cv2.LINE_AA, _SHIFT)
    else:
        thick = max(1, round(f.a * (0.03 + 0.04 * (1 - min(p["lip"], 1.0)))))  # pressed lips: a heavier line
        cv2.polylines(img, [f.pts(us, mid)], False, line, thick, cv2.LINE_AA, _SHIFT)


def _creases(img, f: _Face, expression: str, p, ident, skin) -> None:
    """Wrinkles that belong to an expression: forehead lines, frown lines, nose wrinkles, cheek folds."""
    import cv2

    crease = _col(np.array(skin) * 0.72)
    if expression in ("surprise", "fear"):
        for k in range(3):
            v0 = ident["eye_y"] - ident["brow_h"] - 0.2 - 0.075 * k
            u = _lin(-0.35, 0.35, 9)
            cv2.polylines(img, [f.pts(u, v0 + 0.02 * np.cos(u * 6))], False, crease, 1, cv2.LINE_AA, _SHIFT)
    if expression == "anger":
        for side in (-1, 1):
            u0 = side * 0.06
            v0 = ident["eye_y"] - ident["brow_h"] + 0.02
            cv2.polylines(img, [f.pts([u0, u0 * 0.7], [v0, v0 + 0.12])], False, crease, 1, cv2.LINE_AA, _SHIFT)
    if expression == "disgust":
        for k in range(3):
            v0 = ident["eye_y"] + 0.05 + 0.05 * k
            u = _lin(-0.11, 0.11, 7)
            cv2.polylines(img, [f.pts(u, v0 - 0.02 * (1 - (u / 0.11) ** 2))], False, crease, 1, cv2.LINE_AA, _SHIFT)
    if expression in ("happy", "disgust", "contempt"):  # cheek folds (only on the raised side for contempt)
        mw = ident["mouth_w"] * p["mouth_w"]
        sides = (-1, 1) if expression != "contempt" else ((1,) if p["lift_r"] > p["lift_l"] else (-1,))
        for side in sides:
            t = _lin(0, 1, 7)
            u = side * (ident["nose_w"] + 0.06 + (mw + 0.05 - ident["nose_w"] - 0.06) * t + 0.05 * np.sin(t * 3))
            v = ident["nose_y"] - 0.02 + (ident["mouth_y"] - ident["nose_y"] + 0.04) * t
            cv2.polylines(img, [f.pts(u, v)], False, crease, 1, cv2.LINE_AA, _SHIFT)


def _nose(img, f: _Face, expression: str, ident, skin) -> None:
    import cv2

    shade = _col(np.array(skin) * 0.7)
    nw = ident["nose_w"] * (1.25 if expression == "disgust" else 1.0)   # flared nostrils in disgust
    u = nw * _lin(-1.0, 1.0, 9)
    v = ident["nose_y"] + 0.03 * (1 - (u / nw) ** 2)
    cv2.polylines(img, [f.pts(u, v)], False, shade, 1, cv2.LINE_AA, _SHIFT)
    cv2.polylines(img, [f.pts([0.04, 0.05, 0.06], [ident["eye_y"] + 0.05, ident["nose_y"] - 0.1,
                                                     ident["nose_y"] - 0.03])], False, shade, 1, cv2.LINE_AA, _SHIFT)
    for side in (-1, 1):
        x, y = f.xy(side * nw * 0.55, ident["nose_y"] + 0.015)
        cv2.ellipse(img, _pt(x, y), (int(nw * 0.25 * f.a * _ONE), int(0.015 * f.b * _ONE)), 0, 0, 360,
                    _col(np.array(skin) * 0.45), -1, cv2.LINE_AA, _SHIFT)


def _identity(rng: np.random.Generator) -> dict:
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(tone)
    skin = SKIN_TONES[lo] + (tone - lo) * (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo])
    skin = skin * rng.uniform(0.93, 1.05, 3)
    return dict(
        skin=skin, hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15),
        iris=_col(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]),
        lip=skin * np.array([0.82, 0.55, 0.55]) + np.array([25, 0, 5]),
        aspect=rng.uniform(0.72, 0.88), jaw=rng.uniform(0.0, 0.3), hair_style=rng.integers(0, 4),
        eye_x=rng.uniform(0.34, 0.42), eye_y=rng.uniform(-0.17, -0.07), eye_w=rng.uniform(0.16, 0.2),
        brow_h=rng.uniform(0.17, 0.22), brow_gap=rng.uniform(0.1, 0.16), brow_thick=rng.uniform(0.05, 0.08),
        nose_y=rng.uniform(0.2, 0.27), nose_w=rng.uniform(0.1, 0.15), mouth_y=rng.uniform(0.48, 0.56),
        mouth_w=rng.uniform(0.3, 0.38), lip_t=rng.uniform(0.03, 0.05), gaze=rng.uniform(-1, 1),
        glasses=rng.random() < 0.12,
    )


def _draw_head(s: int, expression: str, rng: np.random.Generator, d: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Upright head (hair, ears, neck, shoulders, face) on a blank canvas; returns (image, alpha mask)."""
    import cv2

    ident = _identity(rng)
    p = _params(expression, rng, d)
    img = np.zeros((s, s, 3), np.uint8)
    mask = np.zeros((s, s), np.uint8)
    b = 0.36 * s
    a = b * ident["aspect"]
    f = _Face(s / 2, s * 0.48, a, b, rng.uniform(-0.25, 0.25) * d)
    skin, hair = _col(ident["skin"]), _col(ident["hair"])
    dark = _col(ident["skin"] * 0.8)

    def fill(poly, colour):
        cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA, _SHIFT)

    cloth = _col(rng.uniform(20, 230, 3))
    t = _lin(0, math.pi, 21)
    fill(_pts(s / 2 + 2.0 * a * np.cos(t), s * 1.1 - 0.24 * s * np.sin(t)), cloth)  # shoulders
    fill(_pts(np.array([s / 2 - 0.45 * a, s / 2 + 0.45 * a, s / 2 + 0.5 * a, s / 2 - 0.5 * a]),
              np.array([f.cy + 0.6 * b, f.cy + 0.6 * b, s * 1.0, s * 1.0])), dark)                      # neck
    if ident["hair_style"] >= 1:  # hair mass behind the head (long hair reaches the shoulders)
        long = ident["hair_style"] == 3
        t = _lin(0, 2 * math.pi, 40)
        hy = f.cy - 0.1 * b + (0.35 * b if long else 0)
        fill(_pts(f.cx + a * 1.15 * np.cos(t), hy + b * (1.2 if long else 1.0) * np.sin(t) * 0.98), hair)
    for side in (-1, 1):  # ears
        x, y = f.cx + side * a * 0.97, f.cy - 0.02 * b
        cv2.ellipse(img, _pt(x, y), (int(0.16 * a * _ONE), int(0.2 * b * _ONE)), 0, 0, 360, dark, -1,
                    cv2.LINE_AA, _SHIFT)
        cv2.ellipse(mask, _pt(x, y), (int(0.16 * a * _ONE), int(0.2 * b * _ONE)), 0, 0, 360, 255, -1,
                    cv2.LINE_AA, _SHIFT)
    t = _lin(0.0, 2 * math.pi * 47 / 48, 48)
    narrow = 1 - ident["jaw"] * np.clip(np.sin(t), 0, None) ** 2      # narrower jaw below the cheeks
    fill(_pts(f.cx + a * np.cos(t) * narrow, f.cy + b * np.sin(t)), skin)
    if ident["hair_style"] != 0 or rng.random() < 0.5:  # hairline / fringe over the top of the face
        line_v = rng.uniform(-0.86, -0.72)
        t = _lin(math.pi, 2 * math.pi, 25)
        cap_x = f.cx + a * 1.06 * np.cos(t)
        cap_y = f.cy + b * 1.06 * np.sin(t)
        # the hairline sits low at the temples and high on the forehead, with a ragged fringe
        fringe = f.cy + b * (line_v + rng.uniform(0.35, 0.6) * np.cos(t) ** 4
                             + 0.05 * np.sin(_lin(0.0, 1.0, 25) * rng.uniform(2, 12)))
        fill(np.concatenate([_pts(cap_x, np.minimum(cap_y, fringe)), _pts(cap_x[::-1], fringe[::-1])]), hair)
    if rng.random() < 0.5:  # soft cheek shading
        for side in (-1, 1):
            x, y = f.xy(side * 0.55, 0.25)
            cv2.ellipse(img, _pt(x, y), (int(0.18 * a * _ONE), int(0.1 * b * _ONE)), 0, 0, 360,
                        _col(ident["skin"] * np.array([1.0, 0.9, 0.9])), -1, cv2.LINE_AA, _SHIFT)
    line = _col(ident["hair"] * 0.5)
    for side in (-1, 1):
        _eye(img, f, side, p, ident, skin, line)
        _brow(img, f, side, p, ident, _col(np.minimum(ident["hair"], ident["skin"]) * 0.55))
    _nose(img, f, expression, ident, ident["skin"])
    _creases(img, f, expression, p, ident, ident["skin"])
    _mouth(img, f, p, ident, skin, _col(ident["lip"] * 0.45))
    if ident["glasses"]:
        frame = _col(rng.uniform(0, 90, 3))
        for side in (-1, 1):
            x, y = f.xy(side * ident["eye_x"], ident["eye_y"])
            cv2.ellipse(img, _pt(x, y), (int(ident["eye_w"] * 1.6 * a * _ONE),
                                                 int(ident["eye_w"] * 1.2 * a * _ONE)), 0, 0, 360, frame,
                        max(1, round(a * 0.03)), cv2.LINE_AA, _SHIFT)
    return img, mask


def draw_face(expression: str, rng: np.random.Generator, size: int = 112, difficulty: float = 1.0) -> np.ndarray:
    """One synthetic face showing ``expression``; returns RGB ``[size, size, 3] uint8``.

    ``difficulty`` in [0, 1] scales every nuisance (pose range, clutter, occlusion, lighting, blur, noise) and
    how weak an expression may be: 0 = frontal, centred, clean faces at full intensity; 1 = the default mix.
    """
    import cv2

    if expression not in EXPRESSION_PARAMS:
        raise ValueError(f"expression: expected one of {', '.join(EXPRESSION_PARAMS)}, got {expression!r}")
    s = size
    d = float(difficulty)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty: expected a value in [0, 1], got {difficulty!r}")
    bg = _background(rng, s, d)
    head, mask = _draw_head(s, expression, rng, d)
    # pose: rotation, scale, offset, mirror — one affine warp of the head layer and its mask
    angle = rng.uniform(-20, 20) * d
    scale = 0.93 + rng.uniform(-0.15, 0.15) * d
    m = cv2.getRotationMatrix2D((s / 2, s * 0.48), angle, scale)
    if rng.random() < 0.5:
        m = m @ np.array([[-1, 0, s], [0, 1, 0], [0, 0, 1]], np.float64)
    m[:, 2] += rng.uniform(-0.08, 0.08, 2) * s * d
    head = cv2.warpAffine(head, m, (s, s), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, m, (s, s), flags=cv2.INTER_LINEAR)
    alpha = mask.astype(np.float32)[..., None] * np.float32(1.0 / 255.0)
    img = bg.astype(np.float32)
    img += (head.astype(np.float32) - img) * alpha
    if rng.random() < 0.3 * d:  # partial occlusion: a hand-like blob or a bar over part of the face
        cx, cy = m @ np.array([s / 2, s * 0.48, 1.0])
        ox, oy = cx + rng.uniform(-0.3, 0.3) * s, cy + rng.uniform(-0.3, 0.35) * s
        if rng.random() < 0.5:
            colour = _col(SKIN_TONES[rng.integers(len(SKIN_TONES))])
            axes = (int(rng.uniform(0.08, 0.16) * s), int(rng.uniform(0.1, 0.2) * s))
            cv2.ellipse(img, (int(ox), int(oy)), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            w, h = rng.uniform(0.15, 0.45) * s, rng.uniform(0.06, 0.14) * s
            cv2.rectangle(img, (int(ox - w / 2), int(oy - h / 2)), (int(ox + w / 2), int(oy + h / 2)),
                          _col(rng.uniform(0, 255, 3)), -1)
    # lighting: a linear gradient in a random direction, global gain, colour cast
    ang = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.45) * d * _plane(ang)                      # [2, 2] corner gains
    gain = (1.0 + rng.uniform(-0.3, 0.2) * d) * (1.0 + rng.uniform(-0.08, 0.08, 3) * d)
    img *= cv2.resize((light[..., None] * gain).astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5 * d:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.1))
    noise = rng.standard_normal((s, s, 1), dtype=np.float32)  # luminance noise: one draw per pixel
    noise *= np.float32(rng.uniform(0.0, 9.0) * d)
    img += noise
    return np.clip(img, 0, 255, out=img).astype(np.uint8)
