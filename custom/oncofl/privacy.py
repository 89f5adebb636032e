"""The one gate for what leaves a site: every task result passes :class:`PHIGuardFilter` on its way out.

Weights are numbers; metrics must be plain named floats; every outgoing string (reply headers, DXO meta) passes
:meth:`OutgoingGuard.redact`, which removes the site's own paths, anything path-like (to the end of its line: paths
hold spaces and commas), DICOM UIDs, DICOM dates and person names (``FAMILY^GIVEN``), in linear time. The guard is the
last line: the messages themselves are built from fixed texts only (:mod:`oncofl.errors`). The executor builds its
messages through the same guard; the filter, configured as a task-result filter on every client, makes that hold for
any component of the job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

REDACTED = "<redacted>"
# Where a path begins: a token that starts like an absolute, home-relative or Windows path, or holds a separator.
# Every pattern below is fixed-width or anchored on a token, so redaction runs in time linear in the text.
_PATH_START = re.compile(r"(?:[A-Za-z]:[\\/]|\\\\|~[\\/]|\.{1,2}[\\/]|[\\/])")
_TOKEN = re.compile(r"[^\s'\"`(\[{<=]+")
_DICOM_UID = re.compile(r"\b\d++(?:\.\d++){4,}+")
_DICOM_DATE = re.compile(r"\b(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)")
_ROOT = "\x00"  # stands for a configured root while a text is redacted
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,63}$")


def _path_start(line: str) -> int:
    """Index where the first path (or DICOM person name) of ``line`` begins, or -1.

    A path may hold spaces, commas and quotes, so nothing after its start can be trusted to be ours: the caller drops
    the rest of the line. A token starts a path when it begins like one (``/``, ``\\``, ``~/``, ``./``, ``C:\\``) or
    holds a separator anywhere (``cases/DOE, JOHN/...``); a token holding ``^`` starts a DICOM person name.
    """
    for token in _TOKEN.finditer(line):
        text = token.group()
        if text.strip("/\\") == "":  # a lone separator ("MPEG2 Main Profile / Main Level") starts no path
            continue
        if "/" in text or "\\" in text or "^" in text or _ROOT in text or _PATH_START.match(text):
            return token.start()
    return -1


class OutgoingGuard:
    """Redacts site-local strings (data root, cache dir, config path), paths, DICOM UIDs, dates and person names
    from outgoing text, in time linear in its length.

    Order: the site's own configured roots first (longest first, so a root is removed whole even where it holds
    spaces); then, line by line, everything from the first path-like token to the end of the line (a path may hold
    spaces and commas, so its end cannot be known); then UIDs and dates.

    Args:
        sensitive: the site's own strings to remove (e.g. its workspace or data root), each also without a trailing
            separator and with ``/`` and ``\\`` swapped; strings shorter than 3 characters are ignored. More can
            be added with :meth:`add`.
    """

    def __init__(self, sensitive: Iterable[str] = ()) -> None:
        self._sensitive: set[str] = set()
        self.add(*sensitive)

    def add(self, *strings: str) -> None:
        for s in strings:
            for variant in (s, s.rstrip("/\\"), s.replace("\\", "/"), s.replace("/", "\\")):
                if variant and len(variant) >= 3:
                    self._sensitive.add(variant)

    def redact(self, text: str) -> str:
        text = text.replace(_ROOT, "")
        for s in sorted(self._sensitive, key=len, reverse=True):
            text = text.replace(s, _ROOT)  # a marker: the line is cut from here, with what follows the root
        lines = []
        for line in text.split("\n"):
            start = _path_start(line)
            lines.append(line if start < 0 else line[:start] + REDACTED)
        text = "\n".join(lines)
        return _DICOM_DATE.sub(REDACTED, _DICOM_UID.sub(REDACTED, text))

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
    floats is refused rather than sent. Every result it passes is logged locally (``RECORD``, task, return code,
    what was redacted) and counted in ``passed``: the record that the gate ran.
    """

    RECORD = "PHI guard passed"

    def __init__(self) -> None:
        super().__init__()
        self.guard = OutgoingGuard()
        self.passed: dict[str, int] = {}  # results this filter passed, per task name: its own record that it ran

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        from nvflare.apis.fl_constant import FLContextKey, ReturnCode

        task = str(fl_ctx.get_prop(FLContextKey.TASK_NAME, "") or "?")
        self._redacted = 0
        headers = shareable.get(ReservedHeaderKey.HEADERS, {})
        for key, value in list(headers.items()):
            if not str(key).startswith("_"):  # FLARE's reserved headers (task ids, peer props) are its own
                headers[key] = self._clean(value)
        try:
            dxo = from_shareable(shareable)
        except Exception:
            dxo = None  # an error reply: headers only, already cleaned
        if dxo is not None:
            dxo.meta = self._clean(dxo.meta)
            if dxo.data_kind == DataKind.METRICS:
                dxo.data = self.guard.metrics(dxo.data)
            dxo.update_shareable(shareable)
        self.passed[task] = self.passed.get(task, 0) + 1
        rc = shareable.get_return_code(ReturnCode.OK)
        self.log_info(
            fl_ctx,
            f"{self.RECORD} result #{self.passed[task]} of task '{task}' ({rc}, "
            f"{dxo.data_kind if dxo is not None else 'no data'}): {self._redacted} string(s) redacted",
        )
        return shareable

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            cleaned = self.guard.redact(value)
            self._redacted += cleaned != value
            return cleaned
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean(v) for v in value)
        return value


# Global weights a site received, per task, so the outgoing result can be measured as an update. One job process
# per job, so task ids are unique here; entries are removed when the result leaves.
_RECEIVED: dict[str, dict[str, Any]] = {}
_LAST_TRAINED_FROM = "<last global model trained from>"
_ENCRYPTED: dict[str, Any] = {}  # marker: the global model of this task arrived as HE ciphertext


class SiteUpdateGuard(Filter):
    """A site's own policy for model updates leaving it, set in the site's ``local/privacy.json`` scope so it holds
    for every job run under that scope, whatever the job configures (FLARE runs site-scope filters before the
    job's own).

    Configure it in both chains of the scope: as a task-data filter it remembers the global weights received; as a
    task-result filter, for WEIGHTS / WEIGHT_DIFF results, it

    * refuses the update when any value is NaN/inf (the site then sends an error reply instead: nothing leaves),
    * drops the variables matching ``exclude_vars`` (regular expressions; default: BatchNorm running statistics,
      which are plain statistics of the site's images) so the site shares nothing about them,
    * bounds the update's L2 norm (``result - received``) to ``max_update_norm`` by scaling it down,

    and logs one line locally saying what it did. A WEIGHTS result without a remembered reference is refused when
    ``max_update_norm`` is set, rather than sent unbounded.

    Homomorphic encryption: FLARE runs this site filter before the job's HE decryptor, so an encrypted global model
    arrives here as ciphertext. The guard does not touch it; the result that follows is still checked for NaN/inf
    and trimmed of ``exclude_vars`` (the job encrypts it afterwards), but its update norm cannot be measured, so with
    ``max_update_norm`` set it is refused with that reason: run HE jobs in a scope whose guard has
    ``max_update_norm: null`` (the ciphertext aggregation already hides each site's update from the server).

    Args:
        max_update_norm: an update (``result - received``) whose L2 norm is above it is scaled down to it (a
            positive number); None (default, ``null`` in JSON): not bounded.
        exclude_vars: regular expressions searched in the variable names; a matching variable is never sent. None
            (default): :attr:`DEFAULT_EXCLUDE` (BatchNorm running statistics); ``[]``: nothing is excluded.
    """

    DEFAULT_EXCLUDE = (r"running_mean$", r"running_var$", r"num_batches_tracked$")

    def __init__(self, max_update_norm: float | None = None, exclude_vars: list[str] | None = None) -> None:
        super().__init__()
        if max_update_norm is not None and not (math.isfinite(max_update_norm) and max_update_norm > 0):
            raise ValueError(f"max_update_norm must be a positive number or null, got {max_update_norm!r}")
        self.max_update_norm = max_update_norm
        patterns = list(self.DEFAULT_EXCLUDE if exclude_vars is None else exclude_vars)
        self.exclude = [re.compile(p) for p in patterns]
        self._announced = False

    def _announce(self, fl_ctx: FLContext) -> None:
        """Once per job: which code this guard is (the site's installed oncofl, not anything a job brought)."""
        if not self._announced:
            from .provenance import PACKAGE, describe, installed

            here = installed()
            self.log_info(fl_ctx, f"site privacy guard: {describe(here['version'], here['code_sha256'])} at {PACKAGE}")
            self._announced = True

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        from nvflare.apis.fl_constant import FilterKey, FLContextKey

        task_id = str(fl_ctx.get_prop(FLContextKey.TASK_ID, "") or "")
        incoming = fl_ctx.get_prop(FLContextKey.FILTER_DIRECTION) == FilterKey.IN
        received = None if incoming else _RECEIVED.pop(task_id, None)
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable  # an error reply or a non-DXO message: nothing numeric to guard
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
            return shareable
        self._announce(fl_ctx)
        if incoming:
            if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM):  # HE ciphertext: no plaintext reference to keep
                _RECEIVED[task_id] = _ENCRYPTED
                self.log_info(fl_ctx, "site privacy policy: encrypted global model received (not inspected)")
            elif dxo.data_kind == DataKind.WEIGHTS:
                _RECEIVED[task_id] = {k: np.array(v, dtype=np.float64, copy=True) for k, v in dxo.data.items()}
            return shareable
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM):
            raise ValueError(
                "update refused by the site privacy policy: the result is already encrypted, so it cannot be "
                "checked; list the HE encryptor after SiteUpdateGuard (job filters run after the site's)"
            )
        # a result with no task data of its own (e.g. cross-site evaluation's submit_model) is measured against the
        # last global model this site trained from
        if received is not None:
            _RECEIVED[_LAST_TRAINED_FROM] = received
        reference = received if received is not None else _RECEIVED.get(_LAST_TRAINED_FROM)
        dxo.data, report = self.guard(dxo.data, dxo.data_kind, reference)
        self.log_info(fl_ctx, f"site privacy policy: {report}")
        dxo.update_shareable(shareable)
        return shareable

    def guard(self, data: Mapping[str, Any], kind: str, received: Mapping[str, Any] | None) -> tuple[dict, str]:
        """The policy on one result; returns the data to send and a one-line report. Raises ValueError to refuse.
        ``received``: the global weights the result started from, :data:`_ENCRYPTED`, or None (not seen)."""
        bad = [k for k, v in data.items() if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))]
        if bad:
            raise ValueError(
                f"update refused by the site privacy policy: non-finite values in {len(bad)} tensor(s) "
                f"(first: {bad[0]}); check the site's data and learning rate"
            )
        kept = {k: v for k, v in data.items() if not any(p.search(k) for p in self.exclude)}
        report = f"excluded {len(data) - len(kept)} of {len(data)} tensors"
        if self.max_update_norm is None:
            return kept, report + "; update norm not bounded"
        if received is _ENCRYPTED:
            raise ValueError(
                "update refused by the site privacy policy: the global model arrived encrypted (HE), so the "
                "update norm cannot be measured; run HE jobs in a privacy scope whose SiteUpdateGuard has "
                "max_update_norm null"
            )
        if kind == DataKind.WEIGHTS:
            if received is None:
                raise ValueError(
                    "update refused by the site privacy policy: max_update_norm is set but the global "
                    "weights this result started from were not seen; list SiteUpdateGuard under the "
                    "scope's task_data_filters too"
                )
            missing = [k for k in kept if k not in received]
            if missing:
                raise ValueError(
                    f"update refused by the site privacy policy: {len(missing)} tensor(s) were not in "
                    f"the global model received (first: {missing[0]})"
                )
            delta = {k: np.asarray(v, dtype=np.float64) - received[k] for k, v in kept.items()}
        else:
            delta = {k: np.asarray(v, dtype=np.float64) for k, v in kept.items()}
        norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
        if norm <= self.max_update_norm:
            return kept, report + f"; update norm {norm:.4g} within bound {self.max_update_norm:g}"
        scale = self.max_update_norm / norm
        out = {}
        for k, v in kept.items():
            original = np.asarray(v)
            scaled = delta[k] * scale + (received[k] if kind == DataKind.WEIGHTS else 0.0)
            out[k] = scaled.astype(original.dtype if original.dtype.kind == "f" else np.float32)
        return out, report + f"; update norm {norm:.4g} clipped to {self.max_update_norm:g}"
