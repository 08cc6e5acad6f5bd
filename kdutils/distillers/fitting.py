"""Distillers for fitting feature maps directly, survey section 2.2.1."""

from __future__ import annotations
