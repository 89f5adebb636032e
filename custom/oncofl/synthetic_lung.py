"""Deterministic multi-site synthetic chest CT with lung nodules: real CT DICOM series (HU) + annotation CSV.

Each CT holds a body, two lungs (-850 HU) with branching vessels, and one or two nodules. Malignant nodules are larger
(10-24 mm), solid and spiculated; benign ones small (5-13 mm), smooth, some calcified (dense). Sites differ like
scanners: slice thickness (partial volume along z), reconstruction-kernel noise, matrix and case mix.

Per site: ``cases/ct_0000/dicom/`` (one file per slice), ``annotations.csv`` (LUNA16-style: case, world
coordinates of the centre in mm (DICOM patient LPS), diameter, malignancy) and ``datalist.json`` listing each nodule
as a case: ``{"image": "cases/ct_0000/dicom", "label": 1, "center_mm": [x, y, z], "diameter_mm": 14.2}``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from .synthetic import VendorProfile, write_dicom_series


@dataclass(frozen=True)
class CTScanner:
    manufacturer: str
    model_name: str
    matrix: int
    slice_mm: float
    kernel_noise_hu: float
    malignant_rate: float
    n_cases: int
    fov_mm: float = 320.0
    coverage_mm: float = 160.0


SITE_SCANNERS = {
    "site-1": CTScanner("SIEMENS", "SOMATOM Force", 128, 2.5, 25.0, 0.5, 36),
    "site-2": CTScanner("GE MEDICAL SYSTEMS", "Revolution CT", 112, 5.0, 15.0, 0.35, 28),
    "site-3": CTScanner("TOSHIBA", "Aquilion ONE", 144, 3.0, 45.0, 0.6, 22),
}


def _vessels(shape: tuple[int, ...], spacing: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-walk tubes inside the lungs (1.5-3 mm), as a boolean mask."""
    mask = np.zeros(shape, dtype=bool)
    inside = np.argwhere(lungs)
    for _ in range(14):
        pos = inside[rng.integers(len(inside))].astype(np.float64) * spacing
        direction = rng.normal(0, 1, 3)
        for _ in range(40):
            direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.3, 3)
            pos = pos + 3.0 * direction / np.linalg.norm(direction)
            idx = np.round(pos / spacing).astype(int)
            if np.any(idx < 1) or np.any(idx >= np.array(shape) - 1):
                break
            mask[tuple(slice(i - 1, i + 1) if s < 2.5 else slice(i, i + 1) for i, s in zip(idx, spacing))] = True
    return mask & lungs


def make_case(scanner: CTScanner, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(HU volume [x, y, z], LPS origin, nodules with LPS centre in mm, diameter and label)."""
    n = scanner.matrix
    nz = int(round(scanner.coverage_mm / scanner.slice_mm))
    ps = scanner.fov_mm / n
    spacing = np.array([ps, ps, scanner.slice_mm])
    origin = np.array([-(n - 1) * ps / 2, -(n - 1) * ps / 2, -(nz - 1) * scanner.slice_mm / 2])
    axes = [origin[i] + spacing[i] * np.arange(s) for i, s in enumerate((n, n, nz))]
    x, y, z = np.meshgrid(*axes, indexing="ij")

    body = (x / 150) ** 2 + (y / 110) ** 2 < 1
    lungs = (((np.abs(x) - 65) / 52) ** 2 + ((y + 5) / 80) ** 2 + (z / 95) ** 2 < 1) & body
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lungs, -850.0, hu)
    hu = np.where(_vessels(hu.shape, spacing, lungs, rng), 40.0, hu)

    nodules = []
    inside = np.argwhere(lungs & ((np.abs(x) - 65) ** 2 / 40**2 + (y + 5) ** 2 / 60**2 + z**2 / 70**2 < 1))
    for _ in range(rng.integers(1, 3)):
        malignant = bool(rng.random() < scanner.malignant_rate)
        diameter = rng.uniform(10, 24) if malignant else rng.uniform(5, 13)
        center = origin + inside[rng.integers(len(inside))] * spacing
        d = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
        radius = diameter / 2
        if malignant:  # spiculated: radius modulated by direction
            theta = np.arctan2(y - center[1], x - center[0])
            phi = np.arctan2(z - center[2], np.hypot(x - center[0], y - center[1]))
            k = rng.integers(5, 9)
            radius = radius * (1 + 0.5 * np.maximum(np.cos(k * theta) * np.cos(k * phi), 0) ** 6)
            value = 30.0
        else:
            value = 400.0 if rng.random() < 0.4 else 20.0  # calcified benign nodules are dense
        hu = np.where(d < radius, value, hu)
        nodules.append(
            {
                "center_mm": [round(float(v), 2) for v in center],
                "diameter_mm": round(float(diameter), 2),
                "label": int(malignant),
            }
        )

    sigma_z = scanner.slice_mm / 2.355 / scanner.slice_mm  # partial volume: FWHM ~ one slice
    hu = gaussian_filter1d(hu, sigma=max(sigma_z, 0.3), axis=2)
    noise = gaussian_filter(rng.normal(0, 1, hu.shape), 0.7)
    hu = hu + scanner.kernel_noise_hu * noise / (noise.std() + 1e-6)
    return hu.astype(np.float32), origin, nodules


def write_site(
    out_dir: Path, site: str, scanner: CTScanner, *, seed: int, split: bool = True, val_fraction: float = 0.25
) -> dict:
    rng = np.random.default_rng([seed, sum(map(ord, site)), 11])
    profile = VendorProfile(
        scanner.manufacturer,
        scanner.model_name,
        scanner.matrix,
        int(round(scanner.coverage_mm / scanner.slice_mm)),
        1.0,
        1.0,
        -1024.0,
        0.0,
        0.0,
        scanner.n_cases,
        0.0,
        fov_mm=scanner.fov_mm,
        coverage_mm=scanner.coverage_mm,
        modality="CT",
    )
    rows, entries = [], []
    for i in range(scanner.n_cases):
        case = f"ct_{i:04d}"
        hu, origin, nodules = make_case(scanner, rng)
        write_dicom_series(
            hu,
            origin,
            profile,
            out_dir / site / "cases" / case / "dicom",
            uid_seed=f"{seed}-{site}-{i}",
            patient_id=f"SYN-CT-{site.upper()}-{i:04d}",
            patient_name=f"SYNTHETIC^CT^{i:04d}",
        )
        for nodule in nodules:
            rows.append([case, *nodule["center_mm"], nodule["diameter_mm"], nodule["label"]])
            entries.append({"image": f"cases/{case}/dicom", **nodule})
    with open(out_dir / site / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "coordX", "coordY", "coordZ", "diameter_mm", "malignant"])
        writer.writerows(rows)
    n_val = round(len(entries) * val_fraction) if split else 0
    datalist = {"training": entries[n_val:], "validation": entries[:n_val]} if split else {"testing": entries}
    (out_dir / site / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")
    return datalist


def generate(out_dir: str | Path, *, seed: int = 0, holdout_per_scanner: int = 8) -> Path:
    out_dir = Path(out_dir).resolve()
    configs = out_dir / "site_configs"
    configs.mkdir(parents=True, exist_ok=True)
    holdout = []
    for site, scanner in SITE_SCANNERS.items():
        write_site(out_dir, site, scanner, seed=seed)
        config = {"site_name": site, "data_root": f"../{site}", "cache_dir": f"../cache/{site}", "num_workers": 2}
        (configs / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")
        held = replace(scanner, n_cases=holdout_per_scanner, malignant_rate=0.5)
        entries = write_site(out_dir / "holdout", site, held, seed=seed + 10_000, split=False)["testing"]
        holdout += [{**e, "image": f"{site}/{e['image']}"} for e in entries]
    (out_dir / "holdout" / "datalist.json").write_text(json.dumps({"testing": holdout}, indent=1) + "\n")
    return out_dir
