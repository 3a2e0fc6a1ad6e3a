"""A small PNG heatmap writer for the overflow report: integers only, no dependency.

``heatmap_png(rows, cols, cells, ...)`` draws a grid of integer values (headroom in
bits) with a discrete colour scale, the value printed in each cell, row and column
labels and a legend, in a built-in 5 x 7 bitmap font, and returns the bytes of an RGB
PNG (zlib + struct + crc32 from the standard library).  Every coordinate and colour is
an integer, so the module stays inside the float scan of tests/test_no_float.py.
"""
from __future__ import annotations

import struct
import zlib

# ------------------------------------------------------------------ bitmap font
# 5 x 7 glyphs, one string of 7 rows per character ('#' = ink).  Lower case letters are
# drawn as upper case.  Drawn for this project.
_GLYPHS = {
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "####.#...##...##...##...##...#####.",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.###.", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#", "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#...#..##..",
    ".": "..........................##...##..", "_": "..............................#####",
    "-": "...............###.................", ":": "......##...##........##...##.......",
    "(": "...#...#...#....#....#.....#.....#.", ")": ".#.....#.....#....#....#...#...#...",
    "/": ".........#...#...#...#...#.........", "=": "..........#####.....#####..........",
    ">": ".#.....#.....#.....#...#...#...#...", "<": "...#...#...#...#.....#.....#.....#.",
    "+": "......#....#..#####..#....#........", ",": "....................##....#...#....",
    "^": "..#...#.#.#...#....................", "*": "......#..#.#.#.###.#.#.#..#........",
    " ": "...................................", "?": ".###.#...#...#...#....#.........#..",
    "!": "..#....#....#....#....#.........#..", "%": "##...##..#...#...#...#...#..##...##",
    "[": ".###..#....#....#....#....#....###.", "]": ".###....#....#....#....#....#..###.",
    "'": "..#....#...........................", ";": "......##...##........##....#...#...", "|": "..#....#....#....#....#....#....#..",
}
GLYPH_W, GLYPH_H = 5, 7
#: horizontal advance of one character at scale 1 (glyph + one blank column)
ADVANCE = GLYPH_W + 1


def _glyph(ch: str) -> str:
    g = _GLYPHS.get(ch.upper())
    if g is None:
        g = _GLYPHS["?"]
    return g.ljust(GLYPH_W * GLYPH_H, ".")


def text_width(s: str, scale: int = 1) -> int:
    return len(s) * ADVANCE * scale


# ------------------------------------------------------------------ canvas

class Canvas:
    """An RGB image as a bytearray, drawn with integer coordinates."""

    def __init__(self, width: int, height: int, bg=(255, 255, 255)):
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, rgb) -> None:
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.w), min(y + h, self.h)
        if x0 >= x1:
            return
        row = bytes(rgb) * (x1 - x0)
        for yy in range(y0, y1):
            i = (yy * self.w + x0) * 3
            self.px[i:i + len(row)] = row

    def frame(self, x: int, y: int, w: int, h: int, rgb, t: int = 1) -> None:
        self.rect(x, y, w, t, rgb)
        self.rect(x, y + h - t, w, t, rgb)
        self.rect(x, y, t, h, rgb)
        self.rect(x + w - t, y, t, h, rgb)

    def text(self, x: int, y: int, s: str, rgb=(0, 0, 0), scale: int = 1) -> None:
        for n, ch in enumerate(s):
            g = _glyph(ch)
            ox = x + n * ADVANCE * scale
            for r in range(GLYPH_H):
                for c in range(GLYPH_W):
                    if g[r * GLYPH_W + c] == "#":
                        self.rect(ox + c * scale, y + r * scale, scale, scale, rgb)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3])
                       for y in range(self.h))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)   # 8-bit RGB
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ the heatmap

#: headroom classes: (lowest value of the class, colour, legend text), first match from
#: the top; values below every class (negative headroom: saturated) take SAT_RGB.
HEADROOM_CLASSES = (
    (17, (158, 202, 225), ">16"),
    (9, (116, 196, 118), "9-16"),
    (5, (199, 233, 160), "5-8"),
    (3, (254, 224, 139), "3-4"),
    (1, (253, 174, 97), "1-2"),
    (0, (244, 109, 67), "0"),
)
SAT_RGB = (165, 0, 38)
#: a designed clamp (counted, by the op's definition, not an overflow)
CLAMP_RGB = (188, 170, 220)
EMPTY_RGB = (240, 240, 240)
GRID_RGB = (255, 255, 255)


def headroom_rgb(v: int):
    for lo, rgb, _ in HEADROOM_CLASSES:
        if v >= lo:
            return rgb
    return SAT_RGB


def heatmap_png(rows: list, cols: list, cells: list, title: str = "", notes: tuple = (),
                marks: set | None = None) -> bytes:
    """Heatmap of integer ``cells[r][c]`` (None = no value) with row labels ``rows`` and
    column labels ``cols``.  ``marks``: (r, c) cells of designed clamps, drawn in
    CLAMP_RGB whatever their value.  Returns PNG bytes."""
    marks = marks or set()
    cw = max(3 * ADVANCE + 3, max((text_width(c) for c in cols), default=0) + 4)
    ch = GLYPH_H + 6
    left = max((text_width(r) for r in rows), default=0) + 10
    top = 2 * ch + 30 + 6 * len([n for n in notes if n])
    legend_h = 3 * ch + 8
    width = max(left + cw * len(cols) + 10, text_width(title, 2) + 20, 560,
                max((text_width(n) + 20 for n in notes), default=0))
    height = top + ch * len(rows) + legend_h + 10 * len(notes) + 20
    cv = Canvas(width, height)
    cv.text(10, 8, title, scale=2)
    y = 8 + 2 * GLYPH_H + 8
    for n in notes:
        if n:
            cv.text(10, y, n, (60, 60, 60))
            y += GLYPH_H + 3
    # column labels (centred over the cells)
    y0 = top - ch
    for j, c in enumerate(cols):
        cv.text(left + j * cw + (cw - text_width(c)) // 2, y0 + 3, c)
    for i, r in enumerate(rows):
        y = top + i * ch
        cv.text(left - 6 - text_width(r), y + 3, r)
        for j in range(len(cols)):
            x = left + j * cw
            v = cells[i][j]
            rgb = EMPTY_RGB if v is None else CLAMP_RGB if (i, j) in marks else headroom_rgb(v)
            cv.rect(x, y, cw, ch, rgb)
            cv.frame(x, y, cw, ch, GRID_RGB)
            if v is not None:
                s = str(v)
                ink = (255, 255, 255) if rgb == SAT_RGB else (0, 0, 0)
                cv.text(x + (cw - text_width(s)) // 2 + 1, y + 3, s, ink)
    # legend
    y = top + ch * len(rows) + 12
    cv.text(10, y, "HEADROOM IN BITS. CELL = CONTAINER BITS - BITLEN(PEAK); *.SCALE ROWS: MIN K_NEED - K_MIN")
    y += ch
    x = 10
    for lo, rgb, label in reversed(HEADROOM_CLASSES):
        cv.rect(x, y, 14, ch - 2, rgb)
        cv.text(x + 18, y + 2, label)
        x += 18 + text_width(label) + 14
    cv.rect(x, y, 14, ch - 2, SAT_RGB)
    cv.text(x + 18, y + 2, "<0 SATURATED")
    x += 18 + text_width("<0 SATURATED") + 14
    if marks:
        cv.rect(x, y, 14, ch - 2, CLAMP_RGB)
        cv.text(x + 18, y + 2, "CLAMP BY DESIGN")
        x += 18 + text_width("CLAMP BY DESIGN") + 14
    cv.rect(x, y, 14, ch - 2, EMPTY_RGB)
    cv.text(x + 18, y + 2, "N/A")
    return cv.png()
