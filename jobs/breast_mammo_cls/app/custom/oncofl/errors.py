"""Errors a site operator can act on.

Every error carries two texts:

* ``local_message()`` for the site's own log: names the site, the file (full path) and the fix;
* ``server_message()`` for what may leave the hospital: names the site, *which* item of the datalist failed
  (e.g. ``training case #3, image``) and the fix, but never a file path or anything read from the file.
"""

from __future__ import annotations


class OncoFLError(Exception):
    """Base class: a problem a person can fix, described with the fix."""

    def __init__(
        self, problem: str, *, fix: str, site: str = "", path: str = "", item: str = "", detail: str = ""
    ) -> None:
        self.problem = problem
        self.detail = detail  # local-only specifics (paths, values read from files)
        self.fix = fix
        self.site = site
        self.path = path
        self.item = item
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
        where = f"[{self.site}] " if self.site else ""
        item = f"{self.item}: " if self.item else ""
        return f"{where}{item}{self.problem}. Fix: {self.fix}"


class SiteConfigError(OncoFLError):
    """The site-local configuration is missing or has a bad field."""


class SiteDataError(OncoFLError):
    """The site's data (datalist, images, labels) cannot be used as it is."""


class DicomReadError(SiteDataError):
    """A DICOM file or series cannot be read."""


class SiteDataErrors(SiteDataError):
    """Several bad cases at one site, reported together so the operator can fix them in one pass."""

    def __init__(self, errors: list[SiteDataError], *, site: str = "") -> None:
        self.errors = errors
        first = errors[0]
        problem = f"{len(errors)} case(s) could not be used; first: {first.item}: {first.problem}"
        super().__init__(problem, fix=first.fix, site=site)

    def local_message(self) -> str:
        errors = getattr(self, "errors", [])
        where = f"[{self.site}] " if self.site else ""
        lines = [f"{where}{len(errors)} case(s) could not be used:"]
        lines += [f"  - {e.item}: {e.problem} (file: {e.path}). Fix: {e.fix}" for e in errors]
        return "\n".join(lines)
