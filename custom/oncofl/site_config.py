"""Site-local configuration: what stays at the hospital (data paths, cache, GPUs), never in a job.

A site's IT writes one small JSON file. It is found, in this order:

1. ``$ONCOFL_SITE_CONFIG`` pointing at the file itself, or at a folder holding ``<site-name>.json``
   (one folder for all sites is handy in the simulator and POC);
2. ``<site workspace>/local/oncofl_site.json`` (the ``local/`` folder of a FLARE startup kit).

Example::

    {
      "site_name": "site-1",
      "data_root": "/data/prostate_mri",
      "datalist": "datalist.json",
      "cache_dir": "/scratch/oncofl_cache",
      "gpu_ids": [0],
      "num_workers": 4,
      "on_unreadable_case": "fail",
      "max_decoded_image_mb": 1024,
      "allow_paths_outside_data_root": false,
      "converted_root": "/data/oncofl_sites/converted",
      "stats_min_count": 5
    }

``max_decoded_image_mb`` caps the pixel data one image (a file or a whole series) may declare before it is decoded;
``allow_paths_outside_data_root`` lets datalist paths (absolute, ``..``, symlinks) resolve outside ``data_root``;
``converted_root`` (optional) names one more folder datalist paths may resolve in: where ``oncofl datasets prepare``
wrote the files it had to convert (a public dataset's download stays ``data_root``, read in place). Any other path
outside ``data_root`` is still refused. ``stats_min_count`` (default 5, at least 1) is this site's floor for the
federated statistics: no group, class or remainder with fewer images or cases leaves the site, whatever minimum a job
asks for (the job's own minimum applies when it is higher).

The file is parsed as JSON and validated field by field; it is never executed.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import SiteConfigError, known

ENV_VAR = "ONCOFL_SITE_CONFIG"
LOCAL_FILE_NAME = "oncofl_site.json"
UNREADABLE_POLICIES = ("fail", "skip")
DEFAULT_MAX_DECODED_IMAGE_MB = 1024
# the site's floor for the federated statistics' minimum count: 5 is the smallest cell size health-statistics
# disclosure rules commonly publish (many use 5-10); a site may raise it, no job can lower it
DEFAULT_STATS_MIN_COUNT = 5


@dataclass(frozen=True)
class SiteConfig:
    """Validated site-local settings. Paths are absolute."""

    data_root: Path
    datalist: Path
    cache_dir: Path
    site_name: str = ""
    gpu_ids: tuple[int, ...] = field(default_factory=tuple)
    num_workers: int = 2
    on_unreadable_case: str = "fail"
    cpu_processes: int = 1  # CPU-only sites: train with this many DDP (gloo) ranks; GPU sites use every gpu_ids entry
    max_decoded_image_mb: int = DEFAULT_MAX_DECODED_IMAGE_MB  # declared pixel size one image may have before decoding
    allow_paths_outside_data_root: bool = False  # datalist paths must resolve inside data_root unless this is set
    converted_root: Path | None = None  # one more folder datalist paths may resolve in (a dataset's conversions)
    stats_min_count: int = DEFAULT_STATS_MIN_COUNT  # the federated statistics' minimum count at this site (floor)
    source: Path | None = None

    def sensitive_strings(self) -> list[str]:
        """Local paths that must never appear in anything sent to the server."""
        return [str(p) for p in (self.data_root, self.datalist, self.cache_dir, self.converted_root, self.source) if p]

    def roots(self) -> tuple[Path, ...]:
        """The folders datalist paths may resolve in: ``data_root``, and ``converted_root`` when set."""
        return (self.data_root, self.converted_root) if self.converted_root else (self.data_root,)


_ALLOWED = {f.name for f in fields(SiteConfig)} - {"source"}
_REQUIRED = ("data_root",)


def find_site_config(site_name: str, workspace_root: str | os.PathLike | None = None) -> Path:
    """Return the path of this site's config file, or raise naming every place that was looked at."""
    looked: list[str] = []
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        candidate = Path(env).expanduser()
        if candidate.is_dir():
            candidate = candidate / f"{site_name}.json"
        if candidate.is_file():
            return candidate
        looked.append(f"${ENV_VAR} -> {candidate}")
    if workspace_root:
        candidate = Path(workspace_root) / "local" / LOCAL_FILE_NAME
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    raise SiteConfigError(
        "no site configuration found",
        fix=f"write {LOCAL_FILE_NAME} into the 'local' folder of the site's startup kit, or set {ENV_VAR} to the file "
        f"(or to a folder holding {site_name}.json); see 'Site configuration' in the oncofl docs (sites-and-data.md)",
        site=site_name,
        detail="looked at: " + "; ".join(looked or ["nothing: no env var, no workspace"]),
    )


def load_site_config(path: str | os.PathLike, site_name: str = "") -> SiteConfig:
    """Read and validate a site config file; every bad field is reported at once, each with its fix."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SiteConfigError(
            "site configuration file does not exist", fix="create it", site=site_name, path=str(path)
        ) from None
    except json.JSONDecodeError as e:
        raise SiteConfigError(
            f"site configuration is not valid JSON (line {e.lineno}, column {e.colno})",
            fix="correct the JSON syntax (no comments or trailing commas)",
            site=site_name,
            path=str(path),
            detail=e.msg,
        ) from e
    return parse_site_config(raw, site_name=site_name, source=path)


def _int_field(raw: dict, key: str, default: int, low: int, high: int, problems: list[str]) -> int:
    """An integer field in [low, high], or the default with a problem recorded."""
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"'{known(key, _ALLOWED)}' must be an integer from {low} to {high}")
        return default
    return value


def _too_wide(folder: Path, data_root: Path | None) -> bool:
    """Whether ``folder`` would open more than a folder of conversions: ``/``, a home folder, or data_root's
    ancestor."""
    homes = {Path.home().resolve(), *(p.resolve() for p in Path("/home").glob("*") if p.is_dir())}
    return folder == Path(folder.anchor) or folder in homes or (data_root is not None and folder in data_root.parents)


def _site_paths(
    raw: dict, base: Path, problems: list[str], details: list[str]
) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """(data_root, datalist, cache_dir, converted_root), absolute; problems (no paths) and local-only details are
    appended."""

    def as_path(key: str, default: Path | None) -> Path | None:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            problems.append(f"'{known(key, _ALLOWED)}' must be a non-empty string path")
            return default
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    data_root = as_path("data_root", None)
    if data_root is not None and "data_root" in raw and not data_root.is_dir():
        problems.append("'data_root' folder does not exist")
        details.append(f"data_root={data_root}")
    datalist = as_path("datalist", None)
    if "datalist" not in raw and data_root is not None:
        datalist = data_root / "datalist.json"
    elif isinstance(raw.get("datalist"), str) and data_root is not None and not Path(raw["datalist"]).is_absolute():
        datalist = (data_root / raw["datalist"]).resolve()  # a relative datalist lives in the data root
    if datalist is not None and data_root is not None and data_root.is_dir() and not datalist.is_file():
        problems.append("datalist file does not exist")
        details.append(f"datalist={datalist}")
    converted_root = as_path("converted_root", None)
    if converted_root is not None and not converted_root.is_dir():
        problems.append("'converted_root' folder does not exist")
        details.append(f"converted_root={converted_root}")
    elif converted_root is not None and _too_wide(converted_root, data_root):
        problems.append(
            "'converted_root' must be a folder of conversions, not the filesystem root, a home folder or a folder "
            "holding data_root (use allow_paths_outside_data_root for that, knowingly)"
        )
        details.append(f"converted_root={converted_root}")
    return data_root, datalist, as_path("cache_dir", base / "oncofl_cache"), converted_root


def _options(raw: dict, problems: list[str], details: list[str]) -> dict:
    """The non-path settings, validated (a bad one is replaced by its default and a problem appended)."""
    gpu_ids = raw.get("gpu_ids", [])
    if not isinstance(gpu_ids, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpu_ids
    ):
        problems.append("'gpu_ids' must be a list of GPU indices such as [0] or [0, 1] ([] = first GPU if any)")
        gpu_ids = []
    outside = raw.get("allow_paths_outside_data_root", False)
    if not isinstance(outside, bool):
        problems.append("'allow_paths_outside_data_root' must be true or false")
        outside = False
    policy = raw.get("on_unreadable_case", "fail")
    if policy not in UNREADABLE_POLICIES:
        problems.append(f"'on_unreadable_case' must be one of {UNREADABLE_POLICIES}")
        details.append(f"on_unreadable_case={policy!r}")
        policy = "fail"
    return {
        "gpu_ids": tuple(gpu_ids),
        "num_workers": _int_field(raw, "num_workers", 2, 0, 64, problems),
        "cpu_processes": _int_field(raw, "cpu_processes", 1, 1, 64, problems),
        "max_decoded_image_mb": _int_field(
            raw, "max_decoded_image_mb", DEFAULT_MAX_DECODED_IMAGE_MB, 1, 1 << 20, problems
        ),
        "stats_min_count": _int_field(raw, "stats_min_count", DEFAULT_STATS_MIN_COUNT, 1, 1_000_000, problems),
        "allow_paths_outside_data_root": outside,
        "on_unreadable_case": policy,
    }


def parse_site_config(raw: object, *, site_name: str = "", source: Path | None = None) -> SiteConfig:
    """Validate a parsed config mapping. Relative paths are resolved against the config file's folder."""
    where = str(source) if source else ""
    if not isinstance(raw, dict):
        raise SiteConfigError("site configuration must be a JSON object", fix="wrap the fields in { }", site=site_name)
    problems: list[str] = []  # may be sent to the server: fixed texts only, no value from the file
    details: list[str] = []  # local-only specifics
    for key in raw:  # a key is text from the file: only its closest allowed name is quoted
        if key not in _ALLOWED:
            close = difflib.get_close_matches(str(key), sorted(_ALLOWED), n=1)
            problems.append(
                f"unknown field (did you mean '{known(close[0], _ALLOWED)}'?)"
                if close
                else f"unknown field (allowed: {', '.join(sorted(_ALLOWED))})"
            )
            details.append(f"unknown field {key!r}")
    for required in _REQUIRED:
        if required not in raw:
            problems.append(f"missing required field '{known(required, _REQUIRED)}'")

    declared_site = raw.get("site_name", "")
    if not isinstance(declared_site, str):
        problems.append("'site_name' must be a string")
        declared_site = ""
    elif declared_site and site_name and declared_site != site_name:
        problems.append(f"'site_name' differs from the name this client runs as, '{site_name}' (a config copied?)")
        details.append(f"site_name={declared_site!r}")
    base = source.parent if source else Path.cwd()
    data_root, datalist, cache_dir, converted_root = _site_paths(raw, base, problems, details)
    options = _options(raw, problems, details)
    if problems:
        raise SiteConfigError(
            "invalid site configuration: " + "; ".join(problems),
            fix="edit the site configuration file (every field: 'Site configuration' in the oncofl docs, "
            "sites-and-data.md)",
            site=site_name,
            path=where,
            detail="; ".join(details),
        )
    assert data_root is not None and datalist is not None and cache_dir is not None
    return SiteConfig(
        data_root=data_root,
        datalist=datalist,
        cache_dir=cache_dir,
        converted_root=converted_root,
        site_name=declared_site or site_name,
        source=source,
        **options,
    )
