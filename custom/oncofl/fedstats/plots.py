"""Plots and a text summary from the statistics JSON FLARE's writer saves (``{feature: {statistic: {site or
"Global": {group: value}}}}``); matplotlib with the Agg backend (no display needed on a server).

* ``stats_vendor_mix.png``   -- cases per site, stacked by vendor group;
* ``stats_intensity.png``    -- intensity histograms, one line per site (group ``all``) and per vendor (global);
* ``stats_geometry.png``     -- slice thickness, pixel spacing, matrix rows and the raw intensity level (p99),
  mean +- standard deviation per site and vendor group.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .vocabulary import CASES  # noqa: E402  (its count is a group's number of cases)

GLOBAL = "Global"  # FLARE's key of the aggregated values
GEOMETRY = ("slice_thickness_mm", "pixel_spacing_mm", "matrix_rows", "intensity_p99")


def sites(stats: dict) -> list[str]:
    """The sites in the statistics, sorted."""
    return sorted(s for s in stats.get(CASES, {}).get("count", {}) if s != GLOBAL)


def value(stats: dict, feature: str, statistic: str, site: str, group: str) -> float | None:
    """One number of the statistics, None where it is absent (e.g. cleansed at the site).

    Args:
        stats: the statistics JSON.
        feature: e.g. ``matrix_rows``.
        statistic: e.g. ``mean``.
        site: a site name or ``Global``.
        group: e.g. ``vendor=siemens``.
    """
    return stats.get(feature, {}).get(statistic, {}).get(site, {}).get(group)


def vendor_counts(stats: dict) -> dict[str, dict[str, int]]:
    """{site: {vendor: cases}} from the ``vendor=*`` groups each site sent."""
    counts = stats.get(CASES, {}).get("count", {})
    return {
        site: {g.split("=", 1)[1]: int(n) for g, n in counts.get(site, {}).items() if g.startswith("vendor=")}
        for site in sites(stats)
    }


def plot_vendor_mix(stats: dict, out: Path) -> Path:
    """Stacked bars: each site's cases per vendor group (groups below the minimum count are not sent)."""
    counts = vendor_counts(stats)
    vendors = sorted({v for per in counts.values() for v in per})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0] * len(counts)
    for vendor in vendors:
        heights = [counts[s].get(vendor, 0) for s in counts]
        ax.bar(list(counts), heights, bottom=bottom, label=vendor)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("cases")
    ax.set_title("vendor mix per site")
    ax.legend(title="vendor", fontsize=8)
    return _save(fig, out / "stats_vendor_mix.png")


def _hist_line(ax, bins: list, label: str) -> None:
    """One histogram as a line of densities (each histogram sums to 1)."""
    total = sum(b[2] for b in bins) or 1
    centers = [(b[0] + b[1]) / 2 for b in bins]
    ax.plot(centers, [b[2] / total for b in bins], label=label)


def plot_intensity(stats: dict, out: Path) -> Path:
    """Intensity histograms: per site (group ``all``) and per vendor (global)."""
    hist = stats.get("intensity", {}).get("histogram", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    for site in sites(stats):
        if hist.get(site, {}).get("all"):
            _hist_line(left, hist[site]["all"], site)
    for group, bins in sorted(hist.get(GLOBAL, {}).items()):
        if group.startswith("vendor=") and bins:
            _hist_line(right, bins, group.split("=", 1)[1])
    left.set_title("intensity per site")
    right.set_title("intensity per vendor (all sites)")
    left.set_ylabel("fraction of voxels")
    for ax in (left, right):
        ax.set_xlabel("intensity (HU for CT; MR/MG scaled to p1..p99)")
        ax.legend(fontsize=8)
    return _save(fig, out / "stats_intensity.png")


def plot_geometry(stats: dict, out: Path) -> Path:
    """Mean +- standard deviation of the geometry features and the raw level, per site and vendor group."""
    features = [f for f in GEOMETRY if f in stats]
    fig, axes = plt.subplots(1, max(1, len(features)), figsize=(3.2 * max(1, len(features)), 3.5))
    axes = list(axes) if len(features) > 1 else [axes]
    for ax, feature in zip(axes, features):
        labels, means, errors = [], [], []
        for site in sites(stats):
            for group in sorted(stats[feature].get("mean", {}).get(site, {})):
                if group.startswith("vendor="):
                    labels.append(f"{site}\n{group.split('=', 1)[1]}")
                    means.append(value(stats, feature, "mean", site, group))
                    errors.append(value(stats, feature, "stddev", site, group) or 0.0)
        ax.errorbar(range(len(means)), means, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(feature, fontsize=9)
    return _save(fig, out / "stats_geometry.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    path.chmod(0o600)  # as FLARE's writer keeps the JSON next to it
    return path


def write_plots(stats: dict, out: Path) -> list[Path]:
    """Every plot of the statistics into ``out``; returns the files.

    Args:
        stats: the statistics JSON.
        out: the folder (the JSON's).
    """
    out = Path(out)
    return [plot_vendor_mix(stats, out), plot_intensity(stats, out), plot_geometry(stats, out)]


def summary_table(stats: dict) -> str:
    """Per site and vendor group: cases, matrix, slices, slice thickness, pixel spacing, raw level (p99) -- the
    means each site sent ("-": not sent, e.g. below the minimum count)."""
    columns = ("matrix_rows", "num_slices", "slice_thickness_mm", "pixel_spacing_mm", "intensity_p99")
    lines = [f"{'site':8} {'group':18} {'cases':>5} " + " ".join(f"{c:>18}" for c in columns)]
    for site in [*sites(stats), GLOBAL]:
        groups = sorted(g for g in stats.get(CASES, {}).get("count", {}).get(site, {}) if g.startswith("vendor="))
        for group in ["all", *groups]:
            cases = value(stats, CASES, "count", site, group)
            if cases is None:
                continue
            cells = [value(stats, c, "mean", site, group) for c in columns]
            text = " ".join(f"{'-' if v is None else f'{v:.2f}':>18}" for v in cells)
            lines.append(f"{site:8} {group:18} {int(cases):>5} {text}")
    return "\n".join(lines)
