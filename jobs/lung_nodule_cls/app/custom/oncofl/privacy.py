"""The one gate for what leaves a site: every task result passes :class:`PHIGuardFilter` on its way out.

Weights are numbers; metrics must be plain named floats; every outgoing string (reply headers, DXO meta) passes
:meth:`OutgoingGuard.redact`, which removes the site's own paths, anything path-like, DICOM UIDs, DICOM dates and
person names (``FAMILY^GIVEN``). The executor builds its messages through the same guard; the filter, configured as a
task-result filter on every client, makes that hold for any component of the job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

REDACTED = "<redacted>"
# Absolute POSIX/Windows paths, home-relative paths, and any token with two or more path separators.
_PATH_LIKE = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?(?:[\\/][^\s\\/'\"<>|,;]+){2,}[\\/]?|[A-Za-z]:\\[^\s'\"<>|,;]+")
_DICOM_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")
_DICOM_DATE = re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b")
_PERSON_NAME = re.compile(r"\b[\w-]+\^[\w^ -]*")
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,63}$")


class OutgoingGuard:
    """Redacts site-local strings (data root, cache dir, config path) and path-like tokens from outgoing text."""

    def __init__(self, sensitive: Iterable[str] = ()) -> None:
        self._sensitive: set[str] = set()
        self.add(*sensitive)

    def add(self, *strings: str) -> None:
        self._sensitive.update(s for s in strings if s and len(s) >= 3)

    def redact(self, text: str) -> str:
        for pattern in (_PATH_LIKE, _DICOM_UID, _DICOM_DATE, _PERSON_NAME):
            text = pattern.sub(REDACTED, text)
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


class PHIGuardFilter(Filter):
    """Task-result filter for clients: redacts every string in our reply headers and DXO meta; checks metrics.

    Weights pass untouched (numbers carry no text). A METRICS result whose names or values are not plain named
    floats is refused rather than sent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.guard = OutgoingGuard()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        headers = shareable.get(ReservedHeaderKey.HEADERS, {})
        for key, value in list(headers.items()):
            if not str(key).startswith("_"):  # FLARE's reserved headers (task ids, peer props) are its own
                headers[key] = self._clean(value)
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable  # an error reply: headers only, already cleaned
        dxo.meta = self._clean(dxo.meta)
        if dxo.data_kind == DataKind.METRICS:
            dxo.data = self.guard.metrics(dxo.data)
        dxo.update_shareable(shareable)
        return shareable

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.guard.redact(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean(v) for v in value)
        return value
