"""Server-side components we add to FLARE's workflows."""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

from .executor import ERROR_HEADER


class SiteErrorReporter(FLComponent):
    """Logs, in the server log, why a site's task failed (the site's own redacted message, with its fix).

    FLARE's workflows only log a failing site's return code; the site's explanation travels in the reply header
    ``oncofl_error`` and is surfaced here, once per failure, e.g.::

        site-3 failed task 'train': [site-3] invalid site configuration: 'data_root' folder does not exist. Fix: ...
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[str, str, str]] = []

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.BEFORE_PROCESS_SUBMISSION:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if not isinstance(result, Shareable):
            return
        rc = result.get_return_code(ReturnCode.OK)
        if rc == ReturnCode.OK:
            return
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "?"
        task = result.get_header(ReservedHeaderKey.TASK_NAME, "?")
        reason = result.get_header(ERROR_HEADER) or f"no explanation sent (return code {rc}); see the site's log"
        self.failures.append((site, task, reason))
        self.log_error(fl_ctx, f"{site} failed task '{task}' ({rc}): {reason}")
