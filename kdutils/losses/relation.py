"""Losses on the structure between samples: survey section 2.2.3."""

from __future__ import annotations

__all__: list[str] = []
