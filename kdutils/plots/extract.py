"""Figures for knowledge extracted from feature maps (chapter 4)."""

from __future__ import annotations

__all__: list[str] = []
