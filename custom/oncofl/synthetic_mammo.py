"""Deterministic multi-site synthetic mammography: real MG DICOM ("for presentation"), malignant vs benign/normal.

Each case is one view (CC or MLO) of one breast (L or R), stored as a vendor would: right breasts with the chest wall
on the right (PatientOrientation P), some vendors MONOCHROME1, 12- or 14-bit, their own matrix and pixel spacing.
Malignant cases hold a spiculated mass and/or a cluster of micro-calcifications; benign/normal cases hold nothing or a
round, smooth (circumscribed) mass. Sites differ in vendor, contrast, noise and class balance.

Layout: ``site-N/cases/case_0000.dcm``, ``site-N/datalist.json`` (``label`` 1 = malignant), ``holdout/``,
``site_configs/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation as MG_SOP
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from scipy.ndimage import gaussian_filter

FULL_SIZE = (3328, 2560)  # rows, columns of a full-field detector
FULL_SPACING = 0.065  # mm


@dataclass(frozen=True)
class MammoVendor:
    manufacturer: str
    model_name: str
    photometric: str
    bits: int
    contrast: float
    noise: float
    malignant_rate: float
    n_cases: int
    size: tuple[int, int] = (208, 160)  # CI default; FULL_SIZE for realistic
    spacing: float = FULL_SPACING * 16

    def scaled(self, factor: float) -> MammoVendor:
        """The same vendor at ``factor`` x the CI resolution (16 gives the full 3328 x 2560 detector)."""
        rows, cols = (round(n * factor) for n in self.size)
        return replace(self, size=(rows, cols), spacing=self.spacing / factor)


SITE_VENDORS = {
    "site-1": MammoVendor("HOLOGIC, Inc.", "Selenia Dimensions", "MONOCHROME2", 12, 1.0, 0.03, 0.5, 60),
    # a 2850 x 2394 detector at 0.1 mm, and a 3328 x 2560 one at 0.085 mm (at 1/16 scale, as the CI default)
    "site-2": MammoVendor(
        "GE HEALTHCARE", "Senographe Pristina", "MONOCHROME1", 14, 0.8, 0.05, 0.3, 44, (178, 150), 0.1 * 16
    ),
    "site-3": MammoVendor(
        "SIEMENS", "MAMMOMAT Revelation", "MONOCHROME2", 12, 1.2, 0.04, 0.6, 36, (208, 160), 0.085 * 16
    ),
}


def make_case(vendor: MammoVendor, malignant: bool, rng: np.random.Generator) -> np.ndarray:
    """Density image [row, col] in [0, 1] with the chest wall at column 0 (canonical side)."""
    rows, cols = vendor.size
    r, c = np.mgrid[:rows, :cols].astype(np.float64)
    center_r = rows * rng.uniform(0.45, 0.55)
    radius_r, radius_c = rows * rng.uniform(0.38, 0.47), cols * rng.uniform(0.6, 0.85)
    ellipse = ((r - center_r) / radius_r) ** 2 + (c / radius_c) ** 2
    breast = ellipse < 1
    scale = min(rows, cols) / 160
    texture = gaussian_filter(rng.normal(0, 1, (rows, cols)), 4 * scale)
    texture /= texture.std() + 1e-6
    glandular = np.clip(0.35 + 0.12 * texture + 0.15 * (1 - ellipse), 0, 1)
    density = np.where(breast, glandular, 0.0)
    density = np.where(breast & (ellipse > 0.92), density + 0.1, density)  # skin line

    def spot(radius_mm: float) -> tuple[float, float]:
        while True:
            pr, pc = rng.uniform(0, rows), rng.uniform(0, cols)
            if ((pr - center_r) / radius_r) ** 2 + (pc / radius_c) ** 2 < 0.6:
                return pr, pc

    def mass(spiculated: bool, strength: float) -> None:
        nonlocal density
        pr, pc = spot(8)
        rad = rng.uniform(7, 11) * scale
        dist = np.hypot(r - pr, c - pc)
        angle = np.arctan2(r - pr, c - pc)
        if spiculated:
            spikes = rng.integers(7, 13)
            phase = rng.uniform(0, 2 * np.pi)
            edge = rad * (1 + 0.9 * np.maximum(np.cos(spikes * angle + phase), 0) ** 8)
            blob = np.clip((edge - dist) / (1.5 * scale), 0, 1)
        else:
            blob = np.clip((rad - dist) / (2.5 * scale), 0, 1)  # circumscribed: smooth round edge
        density = density + strength * blob * breast

    if malignant:
        kind = rng.choice(["mass", "calc", "both"], p=[0.5, 0.25, 0.25])
        if kind in ("mass", "both"):
            mass(spiculated=True, strength=0.5)
        if kind in ("calc", "both"):
            pr, pc = spot(5)
            for _ in range(rng.integers(8, 16)):
                dr, dc = rng.normal(0, 5 * scale, 2)
                calc = np.hypot(r - pr - dr, c - pc - dc) < max(1.6, 1.2 * scale)
                density = np.where(calc & breast, 1.0, density)
    elif rng.random() < 0.5:
        mass(spiculated=False, strength=0.25)
    return np.clip(density, 0, 1)


def _code(value: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SRT", meaning
    return item


def write_mg(
    density: np.ndarray,
    vendor: MammoVendor,
    path: Path,
    *,
    laterality: str,
    view: str,
    uid_seed: str,
    patient_id: str,
    rng: np.random.Generator,
) -> None:
    """Store the canonical density image as the vendor would (flip for R, inversion for MONOCHROME1). The UIDs are
    derived from ``uid_seed``, the noise drawn from ``rng``: the same seeds write the same file."""
    image = density[:, ::-1] if laterality == "R" else density
    max_value = 2**vendor.bits - 1
    signal = 0.1 + 0.8 * np.clip(image * vendor.contrast, 0, 1) + rng.normal(0, vendor.noise, image.shape)
    stored = np.clip(np.round(signal * max_value), 0, max_value)
    if vendor.photometric == "MONOCHROME1":
        stored = max_value - stored
    ds = _mg_instance(vendor, uid_seed=uid_seed, patient_id=patient_id)
    _set_view(ds, laterality, view, spacing=vendor.spacing)
    _set_presentation(ds, vendor)
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, vendor.photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, vendor.bits, vendor.bits - 1, 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _mg_instance(vendor: MammoVendor, *, uid_seed: str, patient_id: str) -> pydicom.Dataset:
    """A "for presentation" MG image of a synthetic patient: SOP, study and series, the vendor's equipment."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_SOP
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MG_SOP, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "MG", vendor.manufacturer, vendor.model_name
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = f"SYNTHETIC^{patient_id}", patient_id, "F", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "", "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    return ds


def _set_view(ds: pydicom.Dataset, laterality: str, view: str, *, spacing: float) -> None:
    """Which breast and view, how the image is oriented, and the detector's pixel spacing."""
    ds.ImageLaterality, ds.ViewPosition = laterality, view
    ds.PatientOrientation = ["P", "L"] if laterality == "R" else ["A", "R"]
    if view == "MLO":
        ds.PatientOrientation = ["P", "FL"] if laterality == "R" else ["A", "FR"]
    ds.ImagerPixelSpacing = [format_number_as_ds(float(spacing))] * 2
    ds.ViewCodeSequence = [
        _code("R-10242" if view == "CC" else "R-10226", "cranio-caudal" if view == "CC" else "medio-lateral oblique")
    ]


def _set_presentation(ds: pydicom.Dataset, vendor: MammoVendor) -> None:
    """The rest of the MG / DX image modules' type 1 attributes, as a vendor's "for presentation" export carries
    them: image type, body part, detector, and how stored values are to be displayed (LUT shape, VOI window)."""
    max_value = 2**vendor.bits - 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.BodyPartExamined, ds.BreastImplantPresent, ds.BurnedInAnnotation = "BREAST", "NO", "NO"
    ds.DetectorType, ds.KVP = "DIRECT", 28
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if vendor.photometric == "MONOCHROME2" else -1
    ds.PresentationLUTShape = "IDENTITY" if vendor.photometric == "MONOCHROME2" else "INVERSE"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = format_number_as_ds(max_value / 2), format_number_as_ds(float(max_value + 1))
    ds.VOILUTFunction = "LINEAR"
    ds.AnatomicRegionSequence = [_code("T-04000", "Breast")]


def write_site(
    out_dir: Path, site: str, vendor: MammoVendor, *, seed: int, split: bool = True, val_fraction: float = 0.25
) -> dict:
    rng = np.random.default_rng([seed, sum(map(ord, site)), 7])
    entries = []
    for i in range(vendor.n_cases):
        malignant = bool(rng.random() < vendor.malignant_rate)
        laterality, view = rng.choice(["L", "R"]), rng.choice(["CC", "MLO"])
        name = f"cases/case_{i:04d}.dcm"
        write_mg(
            make_case(vendor, malignant, rng),
            vendor,
            out_dir / site / name,
            laterality=str(laterality),
            view=str(view),
            uid_seed=f"{seed}-{site}-{i}",
            patient_id=f"SYN-MG-{site.upper()}-{i:04d}",
            rng=rng,
        )
        entries.append({"image": name, "label": int(malignant)})
    n_val = round(len(entries) * val_fraction) if split else 0
    datalist = {"training": entries[n_val:], "validation": entries[:n_val]} if split else {"testing": entries}
    (out_dir / site / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")
    return datalist


def generate(out_dir: str | Path, *, seed: int = 0, scale: float = 1.0, holdout_per_vendor: int = 20) -> Path:
    """Write every site, a held-out set from every vendor, and a site config per site."""
    out_dir = Path(out_dir).resolve()
    configs = out_dir / "site_configs"
    configs.mkdir(parents=True, exist_ok=True)
    holdout = []
    for site, vendor in SITE_VENDORS.items():
        vendor = vendor.scaled(scale)
        write_site(out_dir, site, vendor, seed=seed)
        config = {"site_name": site, "data_root": f"../{site}", "cache_dir": f"../cache/{site}", "num_workers": 2}
        (configs / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")
        held = replace(vendor, n_cases=holdout_per_vendor, malignant_rate=0.5)
        entries = write_site(out_dir / "holdout", site, held, seed=seed + 10_000, split=False)["testing"]
        holdout += [{"image": f"{site}/{e['image']}", "label": e["label"]} for e in entries]
    (out_dir / "holdout" / "datalist.json").write_text(json.dumps({"testing": holdout}, indent=1) + "\n")
    return out_dir
