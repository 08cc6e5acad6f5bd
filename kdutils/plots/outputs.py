"""Figures for better output losses (chapter 2)."""

from __future__ import annotations

__all__: list[str] = []
