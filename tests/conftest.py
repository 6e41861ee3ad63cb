"""Fixtures shared by the whole suite. Every runtime a test starts is closed
by the fixture that made it, pass or fail."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import Ready
from hypothesis import HealthCheck, settings

from llmspell import Runtime

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25
)
settings.register_profile(
    "deep", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=500
)
settings.load_profile("deep" if os.environ.get("LLMSPELL_DEEP") else "default")


# The Python targets the suite's scripts run (scripts may run none by default)
SCRIPT_PYTHON = ["targets:*", "tasks:*"]


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(script_python=SCRIPT_PYTHON)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def ready(rt: Runtime) -> Iterator[Ready]:
    """Scripts of ``rt`` announce they are about to block (see ``helpers.Ready``)."""
    r = Ready(rt)
    yield r
    r.close()
