"""Paired, interleaved timing rounds shared by the benches.

Each round runs every variant once, in an order that rotates from round to round (so drift and cache
effects favour none); a variant's ratio in a round is its time over the reference's time in the same round.
"""
from __future__ import annotations

import sys
from typing import Callable


def interleaved_rounds(
    runners: dict[str, Callable[[], float]], reference: str, rounds: int, warmup: int, unit: str = "s"
) -> dict[str, dict[str, list[float]]]:
    """{"seconds": name -> per-round seconds, "ratios": name -> per-round time / reference time} after
    `warmup` untimed rounds; every runner returns the seconds one run took. Progress goes to stderr."""
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names if name != reference}
    scale = 1e3 if unit == "ms" else 1.0
    for index in range(warmup + rounds):
        shift = index % len(names)
        times = {name: runners[name]() for name in names[shift:] + names[:shift]}
        if index < warmup:
            continue
        for name in names:
            seconds[name].append(times[name])
        for name in ratios:
            ratios[name].append(times[name] / times[reference])
        print(f"round {index - warmup + 1}/{rounds}: " + "  ".join(f"{n} {times[n] * scale:.2f}{unit}" for n in names),
              file=sys.stderr, flush=True)
    return {"seconds": seconds, "ratios": ratios}
