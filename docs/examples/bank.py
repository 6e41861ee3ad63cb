"""A toy bank for the all-or-nothing example: balances in this process."""

from __future__ import annotations

BALANCES: dict[str, int] = {"a": 10, "b": 0}


def debit(acct: str, n: int) -> int:
    if BALANCES[acct] < n:
        raise ValueError(f"account {acct!r} holds {BALANCES[acct]}, cannot pay {n}")
    BALANCES[acct] -= n
    return BALANCES[acct]


def credit(acct: str, n: int) -> int:
    BALANCES[acct] += n
    return BALANCES[acct]
