"""Decode + preprocess benchmark: CPU path (NumPy/SciPy) vs GPU path (CuPy), side by side in one run.

    python scripts/benchmark_preprocess.py [--slices 300] [--repeats 5]

Cases: a 512 x 512 x 300 CT series (0.7 x 0.7 x 1.0 mm) -> RAS, 1 mm isotropic, lung window, 384^3 crop/pad;
a 3328 x 2560 mammogram -> presentation values, canonical side, crop, resize to 1024 x 832 and normalise.
Decoding (pydicom) runs on the CPU in both paths and is timed once. Each stage: 1 warm-up, then the median of
``--repeats`` runs; GPU times are taken after cupy synchronisation, on data already on the device ("stage") and
including the host->device->host copies ("with copies"). Prints a table; ratios are CPU time / GPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from oncofl.dicom.mammo import read_projection
from oncofl.dicom.series import read_series
from oncofl.preprocess import crop_or_pad, gpu_available, modules, resample, resize_2d, to_ras, window
from oncofl.synthetic import SITE_PROFILES, write_dicom_series


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(stage, data: np.ndarray, repeats: int, has_gpu: bool) -> tuple[float, float | None, float | None]:
    """(CPU s, GPU s on device-resident data, GPU s including host<->device copies) for one stage."""
    np_, nd = modules(False)
    cpu = timed(lambda: stage(np_, nd, data), repeats)
    if not has_gpu:
        return cpu, None, None
    cp, cnd = modules(True)
    sync = cp.cuda.Device().synchronize
    on_device = cp.asarray(data)
    gpu = timed(lambda: stage(cp, cnd, on_device), repeats, sync)
    with_copies = timed(lambda: cp.asnumpy(stage(cp, cnd, cp.asarray(data))), repeats, sync)
    return cpu, gpu, with_copies


def write_ct(folder: Path, n: int) -> None:
    """A 512 x 512 x n CT series, 0.7 x 0.7 x 1.0 mm, HU with rescale intercept -1024."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:512, :512]
    body = ((x - 256) / 230) ** 2 + ((y - 256) / 180) ** 2 < 1
    lungs = (((x - 170) / 80) ** 2 + ((y - 240) / 110) ** 2 < 1) | (((x - 342) / 80) ** 2 + ((y - 240) / 110) ** 2 < 1)
    hu = np.where(lungs, -850.0, np.where(body, 40.0, -1000.0))
    volume = hu.T[:, :, None] + rng.normal(0, 20, (512, 512, n))
    profile = replace(
        SITE_PROFILES["site-1"],
        manufacturer="SYNTH-CT",
        modality="CT",
        matrix=512,
        n_slices=n,
        fov_mm=512 * 0.7,
        coverage_mm=n * 1.0,
        rescale_slope=1.0,
        rescale_intercept=-1024.0,
    )
    write_dicom_series(
        volume.astype(np.float32),
        np.array([-179.0, -179.0, -150.0]),
        profile,
        folder,
        uid_seed="bench-ct",
        patient_id="BENCH",
        patient_name="BENCH^CT",
    )


def write_mammogram(path: Path) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation as MG
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    r, c = np.mgrid[:3328, :2560]
    tissue = ((r - 1664) / 1500) ** 2 + (c / 1800) ** 2 < 1
    stored = np.where(tissue, 3000, 200) + np.random.default_rng(1).integers(0, 50, (3328, 2560))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MG, generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MG, ds.file_meta.MediaStorageSOPInstanceUID, "MG"
    ds.ImageLaterality, ds.PatientOrientation, ds.ImagerPixelSpacing = "R", ["P", "L"], [0.065, 0.065]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 3328, 2560, 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (4095 - stored).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).Rows == 3328


def _ct_stage(affine: np.ndarray):
    """The CT path after decoding: RAS, 1 mm isotropic, lung window, 384^3 crop/pad."""

    def stage(xp, ndimage, volume):  # noqa: ANN001
        ras, ras_affine = to_ras(volume, affine, xp)
        out, _ = resample(ras, ras_affine, (1.0, 1.0, 1.0), xp, ndimage)
        return crop_or_pad(window(out, -600, 1500, xp), (384, 384, 384), xp)

    return stage


def _mg_stage(xp, ndimage, image):  # noqa: ANN001
    """The mammography path after decoding: resize to 1024 x 832, normalise."""
    out = resize_2d(image, (1024, 832), xp, ndimage)
    return (out - out.mean()) / (out.std() + 1e-6)


def _decoded(read):
    """``read()`` and the seconds it took (once: decoding runs on the CPU in both paths)."""
    start = time.perf_counter()
    value = read()
    return value, time.perf_counter() - start


def measure_all(slices: int, repeats: int, has_gpu: bool) -> list[tuple[str, float, float | None, float | None]]:
    """Rows (stage, CPU s, GPU s, GPU s with copies): decoding, each stage, and the CT path end to end."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_ct(tmp / "ct", slices)
        write_mammogram(tmp / "mg.dcm")
        ct, ct_decode = _decoded(lambda: read_series(tmp / "ct"))
        mg, mg_decode = _decoded(lambda: read_projection(tmp / "mg.dcm", crop=True))
        ct_row = ("CT RAS+resample 1mm+window+crop", *measure(_ct_stage(ct.affine), ct.array, repeats, has_gpu))
        mg_row = ("MG resize 1024x832+normalise", *measure(_mg_stage, mg.array, repeats, has_gpu))
    # the whole path a site runs once per case: decode (pydicom, CPU in both paths) + the stage (+ copies on GPU)
    end_to_end = (
        "CT series -> tensor, end to end (decode+stage)",
        ct_decode + ct_row[1],
        None,
        ct_decode + ct_row[3] if ct_row[3] is not None else None,
    )
    return [
        (f"CT decode {ct.array.shape} (pydicom, CPU)", ct_decode, None, None),
        (f"MG decode+VOI+flip+crop {mg.array.shape} (CPU)", mg_decode, None, None),
        ct_row,
        mg_row,
        end_to_end,
    ]


def table(rows: list[tuple[str, float, float | None, float | None]], device: str, repeats: int) -> str:
    """The rows as text, with the CPU / GPU ratios."""
    lines = [
        f"\nGPU: {device}; repeats: {repeats} (median after 1 warm-up)",
        f"{'stage':48} {'CPU s':>9} {'GPU s':>9} {'GPU+copies s':>13} {'CPU/GPU':>8} {'CPU/GPU+copies':>15}",
    ]
    for name, cpu, gpu, gpu_copies in rows:
        fmt = lambda v: f"{v:9.4f}" if v is not None else f"{'-':>9}"  # noqa: E731
        ratio = f"{cpu / gpu:8.1f}" if gpu else f"{'-':>8}"
        ratio_c = f"{cpu / gpu_copies:15.1f}" if gpu_copies else f"{'-':>15}"
        lines.append(f"{name:48} {fmt(cpu)} {fmt(gpu)} {fmt(gpu_copies):>13} {ratio} {ratio_c}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    has_gpu = gpu_available()
    rows = measure_all(args.slices, args.repeats, has_gpu)
    device = "none (CPU only)"
    if has_gpu:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(table(rows, device, args.repeats))
    if args.json:
        keys = ("stage", "cpu_s", "gpu_s", "gpu_with_copies_s")
        Path(args.json).write_text(
            json.dumps(
                {"device": device, "repeats": args.repeats, "rows": [dict(zip(keys, r)) for r in rows]}, indent=1
            )
        )


if __name__ == "__main__":
    main()
