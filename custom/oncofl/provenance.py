"""Which oncofl a job was built for, and the check that the oncofl installed here is that one.

A job folder carries settings only; its components come from the oncofl installed at each site and at the server.
The job records the version and a hash of the code it was built with (:class:`ProvenanceCheck` in both of its
configs). At the start of the job every site and the server compare them with their own installation and refuse the
job -- one line naming both versions and the fix, before any data is read -- when they differ.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from . import __version__
from .deploy.kit_install import code_hash_of

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 over every module of the installed package (relative path and bytes, in path order); a wheel's
    package gives the same value (:func:`oncofl.deploy.kit_install.wheel_code_hash`)."""
    modules = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    return code_hash_of([(p.relative_to(PACKAGE).as_posix(), p.read_bytes()) for p in modules])


def installed() -> dict[str, str]:
    """The version and code hash of the oncofl this process imports."""
    return {"version": __version__, "code_sha256": code_hash()}


def describe(version: str, code_sha256: str) -> str:
    return f"oncofl {version} (code {code_sha256[:12]})"


def mismatch(version: str, code_sha256: str, where: str = "this machine") -> str | None:
    """None when the installed oncofl is the one given; else the refusal, naming both and the fix."""
    here = installed()
    if here["version"] == version and here["code_sha256"] == code_sha256:
        return None
    return (
        f"refused: the job was built for {describe(version, code_sha256)} but {where} has "
        f"{describe(here['version'], here['code_sha256'])} installed. Fix: install the consortium's oncofl "
        f"{version} wheel from the startup kit (`oncofl site install --kit <kit>`), or rebuild the job with the "
        f"installed version (`oncofl job export <job>`)"
    )


class ProvenanceCheck(FLComponent):
    """Ends the job at its start where the installed oncofl differs from the one the job was built for.

    Args:
        version: the oncofl version the job was built with.
        code_sha256: the SHA-256 of that oncofl's code (:func:`code_hash` where the job was built).
    """

    def __init__(self, version: str, code_sha256: str) -> None:
        super().__init__()
        self.version = version
        self.code_sha256 = code_sha256

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.START_RUN:
            return
        problem = mismatch(self.version, self.code_sha256, where=fl_ctx.get_identity_name() or "this machine")
        if problem:
            self.log_error(fl_ctx, problem)
            self.system_panic(problem, fl_ctx)
        else:
            self.log_info(fl_ctx, f"{describe(self.version, self.code_sha256)}: installed here, as the job expects")
