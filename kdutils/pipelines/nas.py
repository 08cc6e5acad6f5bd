"""Pipelines that adjust the architecture with KD in the loop: survey section 3.1."""

from __future__ import annotations

__all__: list[str] = []
