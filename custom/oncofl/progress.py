"""Progress bars on long work (tqdm), shown only where a person watches: on when standard error is a terminal, off
in CI logs and pipes. ``ONCOFL_PROGRESS=1`` forces them on, ``ONCOFL_PROGRESS=0`` off."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    forced = os.environ.get("ONCOFL_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress(items: Iterable[T], *, desc: str, unit: str, total: int | None = None) -> Iterator[T]:
    """``items`` with a bar on standard error (count, rate, ETA) when :func:`progress_enabled`."""
    return iter(tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr, disable=not progress_enabled()))


def say(line: str) -> None:
    """Print a line on standard output without breaking a progress bar."""
    tqdm.write(line, file=sys.stdout)
