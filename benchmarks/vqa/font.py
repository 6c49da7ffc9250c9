"""A 3x5 bitmap font (digits and upper-case letters) defined in code, and a text renderer.

The OCR task of the VQA benchmark draws short words and numbers with this font, so no font file
is needed and every image is bit-for-bit reproducible. Each glyph is 5 rows of 3 cells ('#' = ink).
"""
from __future__ import annotations

import numpy as np

GLYPH_WIDTH, GLYPH_HEIGHT, GLYPH_SPACING = 3, 5, 1

_GLYPH_ROWS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"), "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"), "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"), "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"), "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"), "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"), "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."), "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."), "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"), "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"), "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."), "Z": ("###", "..#", ".#.", "#..", "###"),
}

GLYPHS: dict[str, np.ndarray] = {
    ch: np.array([[cell == "#" for cell in row] for row in rows], dtype=bool)
    for ch, rows in _GLYPH_ROWS.items()
}


def text_extent(text: str, scale: int) -> tuple[int, int]:
    """(height, width) in pixels of `text` drawn at `scale` pixels per font cell."""
    if not text:
        raise ValueError("text: expected a non-empty string")
    width = len(text) * GLYPH_WIDTH + (len(text) - 1) * GLYPH_SPACING
    return GLYPH_HEIGHT * scale, width * scale


def text_mask(text: str, scale: int) -> np.ndarray:
    """Boolean ink mask of shape text_extent(text, scale) for `text` (digits / A-Z only)."""
    unknown = sorted(set(text) - set(GLYPHS))
    if unknown:
        raise ValueError(f"text: characters {unknown} are not in the 3x5 font (digits, A-Z)")
    if scale < 1:
        raise ValueError(f"scale: expected an integer >= 1, got {scale}")
    cells = np.zeros((GLYPH_HEIGHT, len(text) * (GLYPH_WIDTH + GLYPH_SPACING) - GLYPH_SPACING), bool)
    for i, ch in enumerate(text):
        x0 = i * (GLYPH_WIDTH + GLYPH_SPACING)
        cells[:, x0:x0 + GLYPH_WIDTH] = GLYPHS[ch]
    return np.kron(cells, np.ones((scale, scale), dtype=bool)).astype(bool)
