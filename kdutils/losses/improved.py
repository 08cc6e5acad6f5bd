"""Better output-based losses: survey section 2.1."""

from __future__ import annotations

__all__: list[str] = []
