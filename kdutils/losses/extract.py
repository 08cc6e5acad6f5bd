"""Losses on knowledge extracted from feature maps: survey section 2.2.2."""

from __future__ import annotations

__all__: list[str] = []
