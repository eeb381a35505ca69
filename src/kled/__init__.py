"""Kled: a self-hosted development platform for teams."""

from __future__ import annotations

__version__ = "0.1.0"
