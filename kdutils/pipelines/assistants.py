"""Pipelines through intermediate models: survey section 3.2."""

from __future__ import annotations

__all__: list[str] = []
