"""Figures for distilling into small networks (chapter 12)."""

from __future__ import annotations

__all__: list[str] = []
