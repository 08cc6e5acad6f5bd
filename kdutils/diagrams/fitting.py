"""Diagrams of the fitting family (see kdutils/diagrams/__init__.py for the style)."""

from __future__ import annotations

from . import Diagram, diagram  # noqa: F401
