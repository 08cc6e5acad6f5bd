"""Losses on feature maps: survey sections 2.2.1 (fitting) and 2.2.2 (extracting)."""

from __future__ import annotations

__all__: list[str] = []
