"""Time from a runtime process's death (SIGKILL by pid) to the facade learning
its replacement's address, per role, in local mode; with Thespian telling the
director (ChildActorExited) and with that message dropped (the pid watch).

    .venv/bin/python bench/process_deaths.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time

import psutil

import llmspell._actor
from llmspell import Runtime

ROLES = ["scheduler", "events", "coordinator", "resources", "supervisor"]


class _Never:
    """Stands for ChildActorExited: no message is one."""


def measure(rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {r: [] for r in ROLES}
    with Runtime(mode="local", workers=1, supervision={"intensity": 1000}) as rt:
        for _ in range(rounds):
            for role in ROLES:
                procs = rt.stats()["processes"]
                before = rt._core.addresses.get(role) if role != "supervisor" else None
                t0 = time.monotonic()
                psutil.Process(procs[role]).kill()
                while True:
                    if role == "supervisor":
                        try:
                            now = rt.stats()["processes"].get(role)
                        except Exception:
                            now = None
                        if now not in (None, procs[role]):
                            break
                    elif rt._core.addresses.get(role) != before:
                        break
                    time.sleep(0.002)
                out[role].append(time.monotonic() - t0)
                time.sleep(0.3)
    return out


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for label in ("thespian tells", "ChildActorExited dropped"):
        if label != "thespian tells":
            llmspell._actor.ChildActorExited = _Never  # type: ignore[misc,assignment]
        for role, times in measure(rounds).items():
            print(
                f"{label:26} {role:12} median {statistics.median(times) * 1000:6.0f} ms"
                f"  max {max(times) * 1000:6.0f} ms  (n={len(times)})"
            )


if __name__ == "__main__":
    main()
