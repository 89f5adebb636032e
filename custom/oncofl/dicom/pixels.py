"""Header reading and pixel decoding with errors that say which file, what went wrong and what to install."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import DicomReadError, known

# transfer syntax names an error may quote (a file's own UID is never quoted: it may hold any text)
SYNTAX_NAMES = frozenset(uid.name for uid in pydicom.uid.AllTransferSyntaxes)

# Which package decodes which compressed transfer syntax (pydicom's pixel-data plugins).
DECODER_PACKAGES = {
    "JPEG Baseline": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG Extended": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG Lossless": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG-LS": "pyjpegls",
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "RLE": "pylibjpeg pylibjpeg-rle",
    "Deflate": "(none needed: re-export the file, it is damaged)",
}


def fail(problem: str, fix: str, path: Path | str, detail: str = "") -> DicomReadError:
    return DicomReadError(problem, fix=fix, path=str(path), detail=detail)


def read_header(path: Path, *, pixels: bool = False) -> pydicom.Dataset:
    """Parse a file's header (and pixel data element if ``pixels``); refuse non-DICOM and damaged files."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise fail(
            "file is not DICOM (no DICM preamble)",
            "remove non-DICOM files from the series folder, or re-export the series from PACS",
            path,
        ) from None
    except Exception as e:  # truncated or garbled headers raise many types inside pydicom
        raise fail(
            f"DICOM header cannot be parsed ({type(e).__name__})",
            "the file is damaged: re-export the series from PACS",
            path,
            detail=str(e),
        ) from e


def decode(ds: pydicom.Dataset, path: Path | str) -> np.ndarray:
    """``ds.pixel_array``, or a :class:`DicomReadError` naming the transfer syntax and the decoder to install."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise fail(
            "file holds no image (e.g. a report, plan or structure set)",
            "point the datalist at image series only",
            path,
            detail=f"Modality {getattr(ds, 'Modality', '?')}",
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except Exception as e:
        name = str(getattr(syntax, "name", syntax))  # a UID pydicom does not know is named by its own text
        message = str(e).lower()
        if syntax is not None and not syntax.is_transfer_syntax:
            raise fail(
                "file names a transfer syntax that is not recognized",
                "re-export the file from PACS with a standard transfer syntax",
                path,
                detail=f"transfer syntax {syntax}: {e}",
            ) from e
        if syntax is not None and syntax.is_compressed:
            package = next((p for k, p in DECODER_PACKAGES.items() if name.startswith(k)), None)
            if any(k in message for k in ("missing", "no pixel data handler", "dependenc", "plugin")):
                raise fail(
                    f"no installed decoder for transfer syntax '{known(name, SYNTAX_NAMES, 'unrecognized')}'",
                    f"pip install {known(package or '', DECODER_PACKAGES.values(), 'pylibjpeg')} (or re-export the "
                    "series uncompressed)",
                    path,
                    detail=f"transfer syntax {syntax}: {e}",
                ) from e
            raise fail(
                f"compressed pixel data ('{known(name, SYNTAX_NAMES, 'unrecognized')}') cannot be decoded "
                f"({type(e).__name__})",
                "the file is damaged or truncated: re-export it from PACS",
                path,
                detail=f"transfer syntax {syntax}: {e}",
            ) from e
        raise fail(
            f"pixel data cannot be decoded ({type(e).__name__})",
            "the file is truncated or damaged: re-export it from PACS",
            path,
            detail=str(e),
        ) from e
