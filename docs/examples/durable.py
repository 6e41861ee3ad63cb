"""A Python step for docs/durability.md: what ``llmspell.current_task()`` tells it."""

from __future__ import annotations

from typing import Any

import llmspell


def charge() -> dict[str, Any]:
    """Pretend to charge a card once: the key goes to the payment service."""
    t = llmspell.current_task()
    assert t is not None
    return {"task": t.id, "attempt": t.attempt, "idempotency_key": t.idempotency_key}
