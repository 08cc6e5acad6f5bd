"""Distillers for small networks: survey section 3.2 (early-stopped KD, DGKD)."""

from __future__ import annotations
