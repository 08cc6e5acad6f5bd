"""Losses that fit feature maps directly: survey section 2.2.1."""

from __future__ import annotations

__all__: list[str] = []
