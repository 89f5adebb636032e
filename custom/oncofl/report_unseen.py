"""The evidence report's answers to "will it work at a hospital that did not train it?" and "for which scanners?".

* **Leave one site out**: for each site, the job runs federated on the other sites only (in the FLARE simulator, as
  every federated row); its model is scored on the left-out site's validation split and on the held-out cases of the
  left-out site's scanner, next to the model of the federation that included the site and the site's own model.
* **Subgroups**: the held-out cases grouped by the scanner vendor read from their DICOM headers (``Manufacturer``);
  every model of the report is scored per group, and where the federated model is worse on a group than the best
  single-site model, the report says so.
* **Intervals**: mean and 95 % interval (Student's t over the seeds, i.e. over data splits) of every row, and of the
  paired difference to the anchors (centralized, the best single site).

The report runs on demo data outside FLARE, so vendor names here are read from local files and stay local.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import pydicom
from scipy import stats as scipy_stats

UNKNOWN = "unknown"
LOSO_PREFIX = "federated fedavg without "  # + the left-out site: a leave-one-site-out row's name


def loso_name(site: str) -> str:
    """The report row of FedAvg on every site but ``site``."""
    return f"{LOSO_PREFIX}{site}"


def interval95(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95 % t-interval of the mean of ``values`` (one value: no interval, NaN bounds)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def fmt_interval(values: list[float], digits: int = 4) -> str:
    """``mean [low, high]``, the 95 % interval of the mean (``mean [-]`` for a single value)."""
    mean, low, high = interval95(values)
    if math.isnan(low):
        return f"{mean:.{digits}f} [-]"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _first_dicom(path: Path) -> Path | None:
    """The image itself, or the first file of a series folder that reads as DICOM; None for NIfTI, CSV and the like."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        try:
            pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Manufacturer"])
            return file
        except Exception:  # not DICOM: the next file
            continue
    return None


def vendor_of(path: Path) -> str:
    """The scanner vendor of an image or series: its ``Manufacturer`` mapped to the statistics job's fixed vendor
    names (``GE MEDICAL SYSTEMS`` and ``GE Healthcare`` are both ``ge``); ``unknown`` where it is not DICOM."""
    from .datasets.common import manufacturer
    from .fedstats.vocabulary import vendor_slug

    file = _first_dicom(path) if path.exists() else None
    return UNKNOWN if file is None else vendor_slug(manufacturer(file))


def _one_class(cases: list[dict[str, Any]]) -> bool:
    """Classification cases (integer labels) of one class only: no AUC can be computed on them."""
    labels = [c.get("label") for c in cases]
    return all(isinstance(v, int) for v in labels) and len(set(labels)) < 2


def subgroup_datalists(holdout: Path, out: Path) -> dict[str, Path]:
    """The held-out datalist split by vendor: ``{vendor: datalist file}`` under ``out`` (paths stay relative to
    ``holdout``). Nothing when no case is DICOM or the cases come from one vendor only (no subgroups to compare); a
    classification group of one class only is left out (its AUC would be meaningless)."""
    entries = json.loads((holdout / "datalist.json").read_text())["testing"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(vendor_of(holdout / entry["image"]), []).append(entry)
    if set(groups) <= {UNKNOWN} or len(groups) < 2:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for vendor, cases in sorted(groups.items()):
        if _one_class(cases):
            continue
        files[vendor] = out / f"{vendor}.json"  # vendor: a fixed slug (letters, digits, _)
        tmp = files[vendor].with_suffix(f".{os.getpid()}.tmp")  # runs side by side read these: replace, never half
        tmp.write_text(json.dumps({"testing": cases}, indent=1) + "\n")
        os.replace(tmp, files[vendor])
    return files


def site_vendors(data: Path, sites: list[str]) -> dict[str, str]:
    """Each site's scanner vendor: the vendor of most of its training cases (``unknown`` for non-DICOM data)."""
    from .site_config import load_site_config

    vendors = {}
    for site in sites:
        config = load_site_config(data / "site_configs" / f"{site}.json", site_name=site)
        datalist = json.loads(config.datalist.read_text())
        found = [vendor_of(config.data_root / e["image"]) for e in datalist.get("training", [])[:5]]
        vendors[site] = statistics.mode(found) if found else UNKNOWN
    return vendors


def _row_values(runs: dict[int, dict[str, dict]], seeds: list[int], name: str, pick) -> list[float]:
    """``pick(row)`` of row ``name`` in every seed that has it and where it is a finite number."""
    values = [pick(runs[s][name]) for s in seeds if name in runs[s]]
    return [v for v in values if v is not None and math.isfinite(v)]


def _paired(runs: dict[int, dict[str, dict]], seeds: list[int], name: str, anchor, pick) -> list[float]:
    """Per seed: ``pick`` of row ``name`` minus the anchor's (``anchor(seed_rows)``: a value or None)."""
    diffs = []
    for s in seeds:
        if name in runs[s] and (reference := anchor(runs[s])) is not None:
            value = pick(runs[s][name])
            if value is not None and math.isfinite(value) and math.isfinite(reference):
                diffs.append(value - reference)
    return diffs


def best_local(rows: dict[str, dict], pick) -> float | None:
    """The best single-site model's value (``pick`` of the ``local site-*`` rows), None where there are none."""
    values = [pick(r) for n, r in rows.items() if n.startswith("local site")]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return max(values) if values else None


def anchor_columns(runs: dict[int, dict[str, dict]], seeds: list[int], name: str) -> list[str]:
    """The paired differences to the anchors, held-out: vs centralized and vs the best single site, [95 %]."""
    held = lambda row: row["held_out"]  # noqa: E731
    central = lambda rows: rows["centralized"]["held_out"] if "centralized" in rows else None  # noqa: E731
    columns = []
    for anchor in (central, lambda rows: best_local(rows, held)):
        diffs = _paired(runs, seeds, name, anchor, held)
        columns.append(_cell(diffs, 3))
    return columns


def loso_section(key: str, runs: dict[int, dict[str, dict]], seeds: list[int]) -> list[str]:
    """The leave-one-site-out table and sentences (nothing when the report has no such rows)."""
    rows0 = runs[seeds[0]]
    left_out = [n.removeprefix(LOSO_PREFIX) for n in rows0 if n.startswith(LOSO_PREFIX)]
    if not left_out:
        return []
    vendors = rows0.get("initial model", {}).get("vendors", {})
    lines = [
        "",
        "## An unseen hospital: leave one site out",
        "",
        f"For each site, FedAvg ran on the other sites only; its global model is scored on the left-out site's "
        f"validation split and on the held-out cases of the left-out site's scanner vendor, next to the FedAvg model "
        f"of all sites and the site's own model (trained on its data alone). {key}, mean [95 % interval] over "
        f"{len(seeds)} seeds.",
        "",
        "| left-out site (vendor) | its validation: FedAvg without it | FedAvg with it | the site alone | "
        "its vendor's held-out cases: without it | with it | without − with [95 %] |",
        "|---|---|---|---|---|---|---|",
    ]
    for site in left_out:
        vendor = vendors.get(site, UNKNOWN)
        name = loso_name(site)
        without = _row_values(runs, seeds, name, lambda r, s=site: r.get("unseen", {}).get(s))
        with_it = _row_values(runs, seeds, "federated fedavg", lambda r, s=site: r["per_site"].get(s))
        alone = _row_values(runs, seeds, f"local {site}", lambda r, s=site: r["per_site"].get(s))
        group = _group_pick(vendor)
        g_without, g_with = _row_values(runs, seeds, name, group), _row_values(runs, seeds, "federated fedavg", group)
        diff = _paired(runs, seeds, name, _row_anchor("federated fedavg", group), group)
        lines.append(
            f"| {site} ({vendor}) | {_cell(without)} | {_cell(with_it)} | {_cell(alone)} | {_cell(g_without)} | "
            f"{_cell(g_with)} | {_cell(diff, 3)} |"
        )
    return lines


def _cell(values: list[float], digits: int = 4) -> str:
    """A table cell: ``mean [95 % interval]``, or ``-`` without values."""
    return fmt_interval(values, digits) if values else "-"


def _group_pick(vendor: str):
    """A row's score on the held-out cases of ``vendor`` (None where it has none)."""
    return lambda row: row.get("subgroups", {}).get(vendor)


def _row_anchor(name: str, pick):
    """The anchor "row ``name``'s ``pick``" of one seed's rows (None where the seed has no such row)."""
    return lambda rows: pick(rows[name]) if name in rows else None


def subgroup_section(key: str, runs: dict[int, dict[str, dict]], seeds: list[int], names: list[str]) -> list[str]:
    """Per vendor: every model's score on the held-out cases of that vendor; and where a federated model is worse
    on a vendor than the best single-site model, a sentence saying so (nothing when there are no subgroups)."""
    rows0 = runs[seeds[0]]
    sizes = rows0.get("initial model", {}).get("group_sizes", {})
    vendors = sorted(sizes)
    if not vendors:
        return []
    shown = [n for n in names if rows0[n].get("subgroups") and not n.startswith(LOSO_PREFIX)]
    lines = [
        "",
        "## Subgroups: held-out cases per scanner vendor",
        "",
        f"{key} of each model on the held-out cases of one vendor (read from the DICOM headers), mean ± sd over "
        f"{len(seeds)} seeds.",
        "",
        "| model | " + " | ".join(f"{v} (n={sizes[v]})" for v in vendors) + " |",
        "|---|" + "---|" * len(vendors),
    ]
    for name in shown:
        cells = [mean_sd(_row_values(runs, seeds, name, _group_pick(v))) for v in vendors]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", *worse_than_best_site(runs, seeds, shown, vendors)]


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sd 0 for one value; ``-`` for none)."""
    if not values:
        return "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def worse_than_best_site(runs: dict[int, dict[str, dict]], seeds: list[int], names: list[str], vendors: list[str]):
    """Sentences naming each (federated model, vendor) where the model's mean is below the best single-site model's
    mean on that vendor's held-out cases, with the paired difference's 95 % interval: "worse" where the whole interval
    is below 0, else "lower". (The best single site is picked on these same cases, which favours it.)"""
    lines = []
    locals_ = [n for n in names if n.startswith("local site")]
    for vendor in vendors:
        pick = _group_pick(vendor)
        means = {n: statistics.mean(v) for n in locals_ if (v := _row_values(runs, seeds, n, pick))}
        if not means:
            continue
        best = max(means, key=means.get)
        for name in (n for n in names if n.startswith("federated")):
            values = _row_values(runs, seeds, name, pick)
            if values and statistics.mean(values) < means[best]:
                diff = _paired(runs, seeds, name, _row_anchor(best, pick), pick)
                high = interval95(diff)[2] if diff else math.nan
                verdict = "worse" if high < 0 else "lower (the interval includes no difference)"
                lines.append(
                    f"- **{name} is {verdict} on {vendor}** than the best single-site model there, {best}: "
                    f"{statistics.mean(values):.4f} vs {means[best]:.4f}, difference {_cell(diff, 3)} (95 %)."
                )
    if not lines and locals_:
        lines.append("- No federated model is worse than the best single-site model on any vendor's held-out cases.")
    return lines
