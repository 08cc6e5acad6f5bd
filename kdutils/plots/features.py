"""Figures for feature maps (chapters 3 and 4)."""

from __future__ import annotations

__all__: list[str] = []
