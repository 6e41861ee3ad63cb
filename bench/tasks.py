"""Trivial callables the benchmarks run as Python tasks."""


def add(x: int, y: int) -> int:
    return x + y
