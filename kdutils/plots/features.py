"""Figures for fitting feature maps directly (chapter 3)."""

from __future__ import annotations

__all__: list[str] = []
