"""Distillers for structural knowledge, survey section 2.2.3."""

from __future__ import annotations
