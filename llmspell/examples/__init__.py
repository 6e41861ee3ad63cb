"""Bundled examples: ``demo.yaml`` (what ``llmspell demo`` runs) and the
Python steps it calls (``steps.py``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SCRIPT_PYTHON", "path"]


def path(name: str) -> Path:
    """The file of a bundled example, e.g. ``path("demo.yaml")``."""
    return Path(str(resources.files(__name__).joinpath(name)))


#: the Python targets the demo's scripts run (``Runtime(script_python=...)``)
SCRIPT_PYTHON = ["llmspell.examples.steps:*"]
