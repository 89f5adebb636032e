"""Deterministic multi-site synthetic prostate MRI: real DICOM MR series + NIfTI whole-gland masks.

Anatomy is defined in patient millimetres (LPS), then sampled on each site's own grid, so sites differ the way
scanners do -- matrix, pixel spacing, slice thickness, intensity gain, rescale slope/intercept, bias field and noise --
while the gland looks the same to a radiologist. Sites also differ in case count (non-IID).

Layout written under ``out_dir``::

    site-1/datalist.json                     {"training": [...], "validation": [...]}, paths relative to site-1/
    site-1/cases/case_0000/dicom/IM_0000.dcm one MR slice per file
    site-1/cases/case_0000/label.nii.gz      uint8 mask on the image grid (1 = prostate gland)
    holdout/...                              the same, cases from every vendor, never used for training
    site_configs/site-1.json                 a ready site-local config pointing at site-1/
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds
from scipy.ndimage import gaussian_filter

FOV_MM = 160.0  # in-plane field of view, as a prostate T2 protocol
COVERAGE_MM = 64.0  # cranio-caudal coverage


@dataclass(frozen=True)
class VendorProfile:
    """How one site's scanner and population differ from the others."""

    manufacturer: str
    model_name: str
    matrix: int  # in-plane pixels (square)
    n_slices: int
    gain: float  # receive-chain scale of the signal
    rescale_slope: float
    rescale_intercept: float
    bias: float  # strength of the smooth multiplicative bias field
    noise: float  # Rician noise sigma relative to tissue signal
    n_cases: int
    lesion_rate: float
    fov_mm: float = FOV_MM
    coverage_mm: float = COVERAGE_MM
    modality: str = "MR"

    @property
    def pixel_spacing(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def slice_thickness(self) -> float:
        return self.coverage_mm / self.n_slices


# Small by default so CI stays fast; `scale_profile` turns them into realistic protocols.
SITE_PROFILES: dict[str, VendorProfile] = {
    "site-1": VendorProfile("SIEMENS", "MAGNETOM Prisma", 64, 16, 1.0, 1.0, 0.0, 0.25, 0.03, 16, 0.5),
    "site-2": VendorProfile("GE MEDICAL SYSTEMS", "DISCOVERY MR750", 56, 14, 2.5, 2.0, 0.0, 0.40, 0.05, 10, 0.3),
    "site-3": VendorProfile("Philips Medical Systems", "Ingenia", 72, 18, 0.6, 1.37, -25.0, 0.15, 0.07, 8, 0.7),
}

REALISTIC = {
    "matrix": {"site-1": 384, "site-2": 320, "site-3": 432},
    "n_slices": {"site-1": 24, "site-2": 20, "site-3": 26},
}


def scale_profile(
    profile: VendorProfile, *, matrix: int | None = None, n_slices: int | None = None, case_factor: float = 1.0
) -> VendorProfile:
    """Same vendor at another resolution / cohort size (e.g. 384x384x24 and hundreds of cases)."""
    return replace(
        profile,
        matrix=matrix or profile.matrix,
        n_slices=n_slices or profile.n_slices,
        n_cases=max(2, round(profile.n_cases * case_factor)),
    )


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid(points: np.ndarray, center: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    local = (points - center) @ rot  # rotate into the ellipsoid frame
    return np.sum((local / radii) ** 2, axis=-1)


def make_case(profile: VendorProfile, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample one case on the vendor grid.

    Returns ``(signal [x, y, z] float32, mask [x, y, z] uint8, lps_origin)``; voxel (i, j, k) sits at
    ``origin + (i * ps, j * ps, k * st)`` in LPS mm.
    """
    ps, st = profile.pixel_spacing, profile.slice_thickness
    n, nz = profile.matrix, profile.n_slices
    origin = np.array([-(n - 1) * ps / 2, -(n - 1) * ps / 2, -(nz - 1) * st / 2]) + rng.normal(0, 2.0, 3)
    axes = [origin[0] + ps * np.arange(n), origin[1] + ps * np.arange(n), origin[2] + st * np.arange(nz)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # [x, y, z, 3] in LPS mm
    eye = np.eye(3)

    # Textured pelvis: muscle/soft tissue inside a body ellipse, bright subcutaneous fat, air outside.
    texture = gaussian_filter(rng.normal(0, 1, (n, n, nz)), sigma=(4 / ps, 4 / ps, 4 / st))
    texture /= texture.std() + 1e-6
    body = _ellipsoid(pts, np.array([0, 5, 0]), np.array([72, 58, 1e6]), eye)
    signal = np.where(body < 1, 0.35 + 0.05 * texture, 0.0)
    signal = np.where((body >= 0.78) & (body < 1), 0.85 + 0.05 * texture, signal)  # fat
    for x in (-38.0, 38.0):  # obturator internus muscles
        signal = np.where(_ellipsoid(pts, np.array([x, 2, 0]), np.array([9, 22, 40]), eye) < 1, 0.22, signal)
    bladder = _ellipsoid(
        pts, np.array([0, -22, 34]) + rng.normal(0, 3, 3), np.array([26, 20, 18]) * rng.uniform(0.8, 1.2), eye
    )
    signal = np.where(bladder < 1, 1.0, signal)
    rectum = _ellipsoid(pts, np.array([0, 32, 0]), np.array([12, 9, 1e6]), eye)
    signal = np.where(rectum < 1, 0.12, signal)
    signal = np.where((rectum >= 1) & (rectum < 1.6), 0.3, signal)  # rectal wall

    # Prostate: hyperintense peripheral zone, intermediate nodular transition zone, dark capsule, optional lesion.
    center = np.array([0.0, 8.0, 0.0]) + rng.normal(0, 3.0, 3)
    radii = np.array([rng.uniform(18, 25), rng.uniform(13, 18), rng.uniform(14, 20)])
    rot = _rotation_z(rng.uniform(-0.25, 0.25))
    gland_r = _ellipsoid(pts, center, radii, rot)
    mask = gland_r < 1
    signal = np.where((gland_r >= 1) & (gland_r < 1.25), 0.18, signal)
    signal = np.where(mask, 0.68 + 0.06 * texture, signal)
    tz = _ellipsoid(pts, center - np.array([0, 3, 0]), radii * 0.6, rot) < 1
    nodules = gaussian_filter(rng.normal(0, 1, (n, n, nz)), sigma=(2 / ps, 2 / ps, 2 / st))
    signal = np.where(tz, 0.45 + 0.08 * nodules / (nodules.std() + 1e-6), signal)
    if rng.random() < profile.lesion_rate:
        lesion_c = center + rot @ np.array([rng.uniform(-0.6, 0.6) * radii[0], 0.7 * radii[1], 0])
        lesion = _ellipsoid(pts, lesion_c, np.full(3, rng.uniform(4, 8)), eye) < 1
        signal = np.where(lesion & mask, 0.25, signal)

    # Scanner: smooth bias field, gain, Rician noise.
    grad = rng.normal(0, 1, 3)
    grad /= np.linalg.norm(grad) + 1e-6
    bias = np.exp(profile.bias * (pts @ grad) / 80.0)
    clean = signal * bias * profile.gain * 1000.0
    sigma = profile.noise * profile.gain * 1000.0 * 0.5
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    return noisy.astype(np.float32), mask.astype(np.uint8), origin


def ras_affine(profile: VendorProfile, origin_lps: np.ndarray) -> np.ndarray:
    """Voxel [x, y, z] -> RAS mm for an axial series with identity orientation."""
    affine = np.diag([-profile.pixel_spacing, -profile.pixel_spacing, profile.slice_thickness, 1.0])
    affine[:3, 3] = origin_lps * np.array([-1, -1, 1])
    return affine


def write_dicom_series(
    signal: np.ndarray,
    origin_lps: np.ndarray,
    profile: VendorProfile,
    folder: Path,
    *,
    uid_seed: str,
    patient_id: str,
    patient_name: str,
) -> None:
    """Write ``signal`` [x, y, z] as an MR (or CT) series, one Explicit VR Little Endian file per slice. The UIDs are
    derived from ``uid_seed``: the same seed writes the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uids = {f"{part}_uid": generate_uid(entropy_srcs=[uid_seed, part]) for part in ("study", "series", "frame")}
    stored = np.clip(np.round((signal - profile.rescale_intercept) / profile.rescale_slope), 0, 4095).astype(np.uint16)
    for k in range(signal.shape[2]):
        ds = _instance(profile, sop_uid=generate_uid(entropy_srcs=[uid_seed, "slice", str(k)]))
        _set_patient_and_study(ds, profile, patient_id=patient_id, patient_name=patient_name, **series_uids)
        _set_acquisition(ds, profile)
        _set_slice(ds, profile, origin_lps, k)
        _set_pixels(ds, profile, stored[:, :, k])
        ds.save_as(folder / f"IM_{k:04d}.dcm", enforce_file_format=True)


def _instance(profile: VendorProfile, *, sop_uid: str) -> pydicom.Dataset:
    """An empty MR (or CT) image instance: its SOP class and UID, in the file meta too."""
    sop_class = CTImageStorage if profile.modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _set_patient_and_study(
    ds: pydicom.Dataset,
    profile: VendorProfile,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
) -> None:
    """What every slice of the series shares: patient, study, series, frame of reference, scanner."""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = profile.modality
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model_name
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientSex = "M"
    ds.PatientBirthDate = ""
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = 1


def _set_acquisition(ds: pydicom.Dataset, profile: VendorProfile) -> None:
    """The protocol: a prostate T2 TSE (MR) or a chest CT."""
    if profile.modality == "MR":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SeriesDescription = "t2_tse_tra (synthetic)"
        ds.BodyPartExamined = "PROSTATE"
        ds.PatientPosition = "FFS"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.MagneticFieldStrength = 3
        ds.RepetitionTime = "4000"
        ds.EchoTime = "100"
        ds.EchoTrainLength = 16
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = "chest ct (synthetic)"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.KVP = 120
        ds.ConvolutionKernel = CT_KERNELS.get(profile.manufacturer, "STANDARD")


def _set_slice(ds: pydicom.Dataset, profile: VendorProfile, origin_lps: np.ndarray, k: int) -> None:
    """Slice ``k``'s number and geometry: axial, identity orientation, ``k`` slice thicknesses above the origin."""
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    position = origin_lps + np.array([0, 0, k * profile.slice_thickness])
    ds.ImagePositionPatient = [_ds(v) for v in position]  # DS values: at most 16 characters each
    ds.SliceLocation = _ds(position[2])
    ds.SliceThickness = _ds(profile.slice_thickness)
    ds.SpacingBetweenSlices = _ds(profile.slice_thickness)
    ds.PixelSpacing = [_ds(profile.pixel_spacing), _ds(profile.pixel_spacing)]


def _set_pixels(ds: pydicom.Dataset, profile: VendorProfile, stored: np.ndarray) -> None:
    """One slice's stored values ``stored`` [x, y] (12 bit) and how they map to the signal (or HU)."""
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = _ds(profile.rescale_slope)
    ds.RescaleIntercept = _ds(profile.rescale_intercept)
    if profile.modality == "CT":
        ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # [x, y] -> rows x columns


# reconstruction kernel named in CT headers, by manufacturer (sharper kernels are the noisier sites)
CT_KERNELS = {"SIEMENS": "Br40", "GE MEDICAL SYSTEMS": "STANDARD", "TOSHIBA": "FC52"}


def _ds(value: float) -> str:
    """A decimal string (DS) value that fits DICOM's 16 characters."""
    return format_number_as_ds(float(value))


def write_site(
    out_dir: Path, site: str, profile: VendorProfile, *, seed: int, val_fraction: float = 0.25, split: bool = True
) -> dict:
    """Write one site's cases and datalist; returns the datalist."""
    site_dir = out_dir / site
    rng = np.random.default_rng([seed, sum(map(ord, site))])
    entries = []
    for i in range(profile.n_cases):
        case = f"case_{i:04d}"
        signal, mask, origin = make_case(profile, rng)
        case_dir = site_dir / "cases" / case
        write_dicom_series(
            signal,
            origin,
            profile,
            case_dir / "dicom",
            uid_seed=f"{seed}-{site}-{case}",
            patient_id=f"SYN-{site.upper()}-{i:04d}",
            patient_name=f"SYNTHETIC^{site.upper().replace('-', '')}^{i:04d}",
        )
        nib.save(nib.Nifti1Image(mask, ras_affine(profile, origin)), case_dir / "label.nii.gz")
        entries.append({"image": f"cases/{case}/dicom", "label": f"cases/{case}/label.nii.gz"})
    if split:
        n_val = max(1, round(len(entries) * val_fraction)) if len(entries) > 1 else 0
        datalist = {"training": entries[n_val:], "validation": entries[:n_val]}
    else:
        datalist = {"testing": entries}
    (site_dir / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
    return datalist


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sites: tuple[str, ...] = tuple(SITE_PROFILES),
    realistic: bool = False,
    case_factor: float = 1.0,
    holdout_per_vendor: int = 3,
) -> Path:
    """Write every site, a held-out set drawn from every vendor, and a site config per site."""
    out_dir = Path(out_dir).resolve()
    profiles = {}
    for site in sites:
        base = SITE_PROFILES[site]
        kwargs = {k: REALISTIC[k][site] for k in REALISTIC} if realistic else {}
        profiles[site] = scale_profile(base, case_factor=case_factor, **kwargs)
    configs = out_dir / "site_configs"
    configs.mkdir(parents=True, exist_ok=True)
    for site, profile in profiles.items():
        write_site(out_dir, site, profile, seed=seed)
        config = {"site_name": site, "data_root": f"../{site}", "cache_dir": f"../cache/{site}", "num_workers": 2}
        (configs / f"{site}.json").write_text(json.dumps(config, indent=2) + "\n")
    holdout = []
    for site, profile in profiles.items():
        held = replace(profile, n_cases=holdout_per_vendor)
        entries = write_site(out_dir / "holdout", site, held, seed=seed + 10_000, split=False)["testing"]
        holdout += [{k: f"{site}/{v}" for k, v in e.items()} for e in entries]
    (out_dir / "holdout" / "datalist.json").write_text(json.dumps({"testing": holdout}, indent=2) + "\n")
    (out_dir / "SYNTHETIC_DATA_README.txt").write_text(
        f"Synthetic prostate MRI written by oncofl.synthetic (seed={seed}, realistic={realistic}).\n"
        "Not patient data. Patient names/IDs are synthetic placeholders.\n"
    )
    return out_dir
