"""Annotations on display images: orientation letters, a millimetre scale bar,
a caption and a colour legend.

Pure: an RGB ``uint8`` array in, a new array out (Pillow draws in memory,
nothing is written). The letters come from the image's right and up
directions in LPS, so a slice or a 3D view can only be labelled the way it
was actually sampled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_PX = 14
MARGIN_PX = 6
TEXT_RGB, OUTLINE_RGB = (255, 255, 255), (0, 0, 0)
# Scale bar lengths to choose from (mm): the longest one under a quarter of the width.
SCALE_BARS_MM = (5, 10, 20, 50, 100, 200)
# Letter of the patient direction each LPS axis increases (+) or decreases (-) towards.
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def direction_letter(direction_lps: np.ndarray) -> str:
    """"L", "R", "P", "A", "S" or "I": the patient direction nearest to ``direction_lps``."""
    d = np.asarray(direction_lps, dtype=np.float64)
    axis = int(np.argmax(np.abs(d)))
    return _AXIS_LETTERS[axis][0 if d[axis] > 0 else 1]


def edge_letters(right_lps: np.ndarray, up_lps: np.ndarray) -> dict[str, str]:
    """The patient direction at each image edge: ``{"left", "right", "top", "bottom"}``."""
    right, up = np.asarray(right_lps, dtype=np.float64), np.asarray(up_lps, dtype=np.float64)
    return {"right": direction_letter(right), "left": direction_letter(-right),
            "top": direction_letter(up), "bottom": direction_letter(-up)}


def annotate(rgb: np.ndarray, *, right_lps, up_lps, mm_per_pixel: float, caption: str = "",
             legend: list[tuple[str, tuple[int, int, int]]] = ()) -> np.ndarray:
    """``rgb`` (H, W, 3) with edge letters, a scale bar (bottom left), the
    caption (top left, on as many lines as it needs to stay left of the top
    edge's letter) and the legend (bottom right: a swatch and a name per
    entry)."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    font = _font()
    w, h = image.size
    letters = edge_letters(right_lps, up_lps)
    _text(draw, (w / 2, MARGIN_PX), letters["top"], font, "mt")
    _text(draw, (w / 2, h - MARGIN_PX), letters["bottom"], font, "mb")
    _text(draw, (MARGIN_PX, h / 2), letters["left"], font, "lm")
    _text(draw, (w - MARGIN_PX, h / 2), letters["right"], font, "rm")
    # Left of the top edge's letter.
    room = w / 2 - draw.textlength(letters["top"], font=font) / 2 - 2 * MARGIN_PX
    for k, line in enumerate(_lines(draw, caption, font, room)):
        _text(draw, (MARGIN_PX, MARGIN_PX + k * (FONT_PX + 4)), line, font, "la")
    _scale_bar(draw, w, h, mm_per_pixel, font)
    y = h - MARGIN_PX
    for name, colour in reversed(list(legend)):
        _text(draw, (w - MARGIN_PX, y), name, font, "rb")
        left = w - MARGIN_PX - draw.textlength(name, font=font) - FONT_PX - 4
        draw.rectangle([left, y - FONT_PX + 2, left + FONT_PX - 2, y], fill=tuple(colour), outline=OUTLINE_RGB)
        y -= FONT_PX + 4
    return np.asarray(image)


def _scale_bar(draw: ImageDraw.ImageDraw, w: int, h: int, mm_per_pixel: float, font) -> None:
    fitting = [mm for mm in SCALE_BARS_MM if mm / mm_per_pixel <= w / 4]
    if not fitting:
        return
    length_mm = fitting[-1]
    x0, y = MARGIN_PX + 2, h - MARGIN_PX - 4
    x1 = x0 + length_mm / mm_per_pixel
    draw.rectangle([x0 - 1, y - 3, x1 + 1, y + 3], fill=OUTLINE_RGB)
    draw.rectangle([x0, y - 2, x1, y + 2], fill=TEXT_RGB)
    _text(draw, (x0, y - 6), f"{length_mm} mm", font, "lb")


def _lines(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    """``text`` broken between words into lines no wider than ``width``
    (a single word wider than it keeps a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, anchor: str) -> None:
    draw.text(xy, text, fill=TEXT_RGB, font=font, anchor=anchor, stroke_width=2, stroke_fill=OUTLINE_RGB)


def _font():
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
