"""Figures for compression-oriented KD (chapters 11 and 12)."""

from __future__ import annotations

__all__: list[str] = []
