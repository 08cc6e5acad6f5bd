"""Distillers for better output losses, survey section 2.1."""

from __future__ import annotations
