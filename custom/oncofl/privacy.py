"""The one gate for text that leaves a site: error messages and metric names sent to the server.

Weights are numbers; metrics are validated to be plain named floats; every outgoing string passes
:meth:`OutgoingGuard.redact`, which removes the site's own paths and anything that looks like a file path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

REDACTED = "<redacted>"
# Absolute POSIX/Windows paths, home-relative paths, and any token with two or more path separators.
_PATH_LIKE = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?(?:[\\/][^\s\\/'\"<>|,;]+){2,}[\\/]?|[A-Za-z]:\\[^\s'\"<>|,;]+")
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,63}$")


class OutgoingGuard:
    """Redacts site-local strings (data root, cache dir, config path) and path-like tokens from outgoing text."""

    def __init__(self, sensitive: Iterable[str] = ()) -> None:
        self._sensitive: set[str] = set()
        self.add(*sensitive)

    def add(self, *strings: str) -> None:
        self._sensitive.update(s for s in strings if s and len(s) >= 3)

    def redact(self, text: str) -> str:
        text = _PATH_LIKE.sub(REDACTED, text)
        for s in sorted(self._sensitive, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        return text

    @staticmethod
    def metrics(values: Mapping[str, float]) -> dict[str, float]:
        """Metrics that may leave the site: short identifier names, finite floats."""
        out = {}
        for name, value in values.items():
            if not _METRIC_NAME.match(name):
                raise ValueError(f"metric name {name!r} is not a plain identifier")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"metric {name} is not finite: {value}")
            out[name] = value
        return out
