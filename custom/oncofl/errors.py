"""Errors a site operator can act on.

Every error carries two texts:

* ``local_message()`` for the site's own log: names the site, the file (full path), the values read from it
  (``detail``) and the fix;
* ``server_message()`` for what may leave the hospital, built only from our own fixed text: the site's name, *which*
  item of the datalist failed (e.g. ``training case #3, image``), the ``problem`` and ``fix`` texts and the error's
  type -- never a path, a value read from a file, or an exception's message.

The rule for every raise: ``problem`` and ``fix`` are fixed sentences of this code (they may name positions such as
``frame 3`` and exception *types*); whatever was read from a file, a path or another exception's message goes into
``detail`` (local only). ``tests/unit/test_errors.py`` checks every raise in the package for it.
"""

from __future__ import annotations

from collections.abc import Iterable


def known(value: str, vocabulary: Iterable[str], default: str = "other") -> str:
    """``value`` if it is one of our fixed ``vocabulary`` (e.g. transfer syntax names), else ``default``: the only way
    a value that came from a file may appear in a ``problem`` or ``fix`` text."""
    return value if value in set(vocabulary) else default


class OncoFLError(Exception):
    """Base class: a problem a person can fix, described with the fix.

    Args:
        problem: what is wrong: a fixed sentence of this code (no path or value read from a file); in both messages.
        fix: what the operator should do: a fixed sentence of this code; in both messages.
        site: the site's name, in both messages; empty: not known yet (see :meth:`with_context`).
        path: the file concerned, named in the local message only.
        item: which datalist item failed (e.g. ``training case #3, image``), in both messages; empty: not known
            yet (see :meth:`with_context`).
        detail: local-only specifics (values read from files, another exception's message), in the local message
            only.
    """

    def __init__(
        self, problem: str, *, fix: str, site: str = "", path: str = "", item: str = "", detail: str = ""
    ) -> None:
        self.problem = problem
        self.detail = detail  # local-only specifics (paths, values read from files)
        self.fix = fix
        self.site = site
        self.path = path
        self.item = item
        self.kind = ""  # the type of the exception this error stands for, when it wraps one (see case_error)
        super().__init__(self.local_message())

    def with_context(self, *, site: str | None = None, item: str | None = None) -> OncoFLError:
        """Fill in the site / datalist item once they are known (errors are raised deep in readers)."""
        if site and not self.site:
            self.site = site
        if item and not self.item:
            self.item = item
        self.args = (self.local_message(),)
        return self

    def local_message(self) -> str:
        where = f"[{self.site}] " if self.site else ""
        item = f"{self.item}: " if self.item else ""
        path = f" (file: {self.path})" if self.path else ""
        detail = f" [{self.detail}]" if self.detail else ""
        return f"{where}{item}{self.problem}{detail}{path}. Fix: {self.fix}"

    def server_message(self) -> str:
        """What may leave the site: fixed text, the datalist position and the error's type only."""
        where = f"[{self.site}] " if self.site else ""
        item = f"{self.item}: " if self.item else ""
        return f"{where}{item}{self.problem} ({self.kind or type(self).__name__}). Fix: {self.fix}"


class SiteConfigError(OncoFLError):
    """The site-local configuration is missing or has a bad field."""


class JobError(OncoFLError):
    """What the server sent does not fit this job at this site (model, algorithm, training that diverged)."""


class ModelFileError(OncoFLError):
    """A model file cannot be used: unreadable, not plain weights, or not this task's network."""


class SiteDataError(OncoFLError):
    """The site's data (datalist, images, labels) cannot be used as it is."""


class DicomReadError(SiteDataError):
    """A DICOM file or series cannot be read."""


class NiftiReadError(SiteDataError):
    """A NIfTI image cannot be read, or is not one 3D volume with world geometry."""


def case_error(error: BaseException, item: str, *, path: str = "") -> SiteDataError:
    """Any exception raised while one case was loaded, as a :class:`SiteDataError` that is safe to report.

    Our own errors keep their fixed texts; any other exception (an ``OSError`` naming a path, a ``ValueError``
    quoting a header value, ...) is described to the server by its *type* only, its message goes to ``detail``.
    """
    if isinstance(error, SiteDataError):
        return error.with_context(item=item)
    if isinstance(error, OncoFLError):  # fixed texts already; keep them
        problem, fix, detail, path = error.problem, error.fix, error.detail, error.path or path
    else:
        filename = getattr(error, "filename", None)
        problem = "case cannot be loaded"
        fix, detail = "see this site's local log for the file and the reason", f"{type(error).__name__}: {error}"
        path = str(filename) if filename else path
    wrapped = SiteDataError(problem, fix=fix, path=path, item=item, detail=detail)
    wrapped.kind = type(error).__name__
    return wrapped


class SiteDataErrors(SiteDataError):
    """Several bad cases at one site, reported together so the operator can fix them in one pass.

    Args:
        errors: the cases' errors, at least one; the first gives this error's problem and fix.
        site: the site's name, in both messages.
    """

    def __init__(self, errors: list[SiteDataError], *, site: str = "") -> None:
        self.errors = errors
        first = errors[0]
        problem = f"{len(errors)} case(s) could not be used; first: {first.item}: {first.problem}"
        super().__init__(problem, fix=first.fix, site=site)

    def server_message(self) -> str:
        """Every bad case by position, problem and type (fixed texts), so the consortium sees them all."""
        where = f"[{self.site}] " if self.site else ""
        cases = "; ".join(e.server_message().removeprefix(where) for e in self.errors[:20])
        more = f"; and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        return f"{where}{len(self.errors)} case(s) could not be used; first: {cases}{more}"

    def local_message(self) -> str:
        errors = getattr(self, "errors", [])
        where = f"[{self.site}] " if self.site else ""
        lines = [f"{where}{len(errors)} case(s) could not be used:"]
        lines += [
            f"  - {e.item}: {e.problem}{f' [{e.detail}]' if e.detail else ''} (file: {e.path}). Fix: {e.fix}"
            for e in errors
        ]
        return "\n".join(lines)
