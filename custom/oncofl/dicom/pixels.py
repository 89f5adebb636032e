"""Header reading and pixel decoding with errors that say which file, what went wrong and what to install."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder

from ..errors import DicomReadError, known

# transfer syntax names an error may quote (a file's own UID is never quoted: it may hold any text)
SYNTAX_NAMES = frozenset(uid.name for uid in pydicom.uid.AllTransferSyntaxes)

# Largest decoded image (a file, or a whole series) a site accepts, in bytes of stored pixels: a tiny compressed file
# may declare a 40000 x 40000 image, and decoders allocate the declared size before they read a byte. Sites set it
# with ``max_decoded_image_mb`` in their site config (see :func:`decode_limit`).
DEFAULT_DECODE_LIMIT_BYTES = 1024 * 2**20
FILE_SIZE_MARGIN = 16 * 2**20  # headers, overlays, private data beside the pixels
_DECODE_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar(
    "oncofl_decode_limit", default=DEFAULT_DECODE_LIMIT_BYTES
)

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


@contextmanager
def decode_limit(max_bytes: int) -> Iterator[None]:
    """Within this block (this thread / context), refuse images whose declared size exceeds ``max_bytes``."""
    token = _DECODE_LIMIT.set(int(max_bytes))
    try:
        yield
    finally:
        _DECODE_LIMIT.reset(token)


def decode_limit_bytes() -> int:
    """The declared pixel size (bytes) images may have here (see :func:`decode_limit`)."""
    return _DECODE_LIMIT.get()


def declared_bytes(ds: pydicom.Dataset, path: Path | str) -> int:
    """Rows x Columns x frames x samples x bytes per sample, as the header declares them (nothing decoded)."""
    try:
        bits = int(ds.get("BitsAllocated", 8) or 8)
        sizes = [int(ds.get(k, 1) or 1) for k in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel")]
    except (TypeError, ValueError) as e:
        raise fail(
            "image size attributes (Rows, Columns, NumberOfFrames, BitsAllocated) are not numbers",
            "the file does not follow the DICOM standard: re-export it",
            path,
            detail=str(e),
        ) from e
    if min([*sizes, bits]) < 0:
        raise fail("image size attributes are negative", "the file is damaged: re-export it", path)
    return math.prod(sizes) * max(1, math.ceil(bits / 8))


def check_declared_size(headers: list[tuple[Path, pydicom.Dataset]], where: Path | str) -> None:
    """Refuse, before any decoding, a file or series whose declared pixel size exceeds the site's limit."""
    total, limit = sum(declared_bytes(ds, path) for path, ds in headers), decode_limit_bytes()
    if total > limit:
        raise fail(
            "image declares more pixel data than this site's limit (max_decoded_image_mb)",
            "if the image is genuine, raise 'max_decoded_image_mb' in the site config; otherwise the file is "
            "damaged or crafted: re-export it from PACS",
            where,
            detail=f"declared {total / 2**20:.1f} MiB, limit {limit / 2**20:.1f} MiB",
        )


def read_header(path: Path, *, pixels: bool = False) -> pydicom.Dataset:
    """Parse a file's header (and pixel data element if ``pixels``); refuse non-DICOM and damaged files, and (with
    ``pixels``) a file larger than the site's image size limit, before its bytes are read into memory."""
    try:
        if pixels and Path(path).stat().st_size > decode_limit_bytes() + FILE_SIZE_MARGIN:
            raise fail(
                "file is larger than this site's image size limit (max_decoded_image_mb)",
                "if the image is genuine, raise 'max_decoded_image_mb' in the site config; otherwise re-export it",
                path,
            )
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except DicomReadError:
        raise
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


def image_types(ds: pydicom.Dataset) -> set[str]:
    """The ImageType values, upper case (one value may come as a plain string)."""
    value = ds.get("ImageType") or []
    return {str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)}


def require_image(ds: pydicom.Dataset, path: Path | str) -> None:
    """Refuse a file read with its pixel data element that has none (a report, plan or structure set)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if any(k in ds for k in ("Rows", "Columns", "BitsAllocated")) or "SeriesInstanceUID" not in ds:
            raise fail(  # an image's header without its pixels, or a header cut short: an interrupted copy
                "file ends before its pixel data: the file is truncated",
                "re-export the complete series from PACS",
                path,
            )
        raise fail(
            "file holds no image (e.g. a report, plan or structure set)",
            "point the datalist at image series only",
            path,
            detail=f"Modality {ds.get('Modality', '?')}",
        )


def decoder_available(syntax: pydicom.uid.UID) -> bool:
    """Whether pydicom has a working (installed) decoder for ``syntax``: its own availability API, not a guess
    from an exception's wording."""
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:  # pydicom has no decoder for this syntax at all
        return False


def decode(ds: pydicom.Dataset, path: Path | str) -> np.ndarray:
    """``ds.pixel_array`` once its declared size passed the site's limit, or a :class:`DicomReadError` that tells a
    missing decoder (naming the package to install) from damaged data."""
    require_image(ds, path)
    check_declared_size([(Path(path), ds)], path)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except Exception as e:
        raise _decode_error(syntax, e, path) from e


def _decode_error(syntax: pydicom.uid.UID | None, error: Exception, path: Path | str) -> DicomReadError:
    """The error for a failed decode: unknown syntax, decoder not installed, or damaged data."""
    standard = syntax is not None and syntax.is_transfer_syntax
    name = known(str(getattr(syntax, "name", "")), SYNTAX_NAMES, "unrecognized")  # only names pydicom knows
    if standard and not decoder_available(syntax):
        package = next((p for k, p in DECODER_PACKAGES.items() if name.startswith(k)), None)
        return fail(
            f"no installed decoder for transfer syntax '{known(name, SYNTAX_NAMES, 'unrecognized')}'",
            f"pip install {known(package or '', DECODER_PACKAGES.values(), 'pylibjpeg')} (or re-export the series "
            "uncompressed)",
            path,
            detail=str(error),
        )
    if syntax is not None and not standard:
        return fail(
            "the file's transfer syntax is not a standard one: no decoder exists for it",
            "re-export the series with a standard transfer syntax (e.g. Explicit VR Little Endian)",
            path,
            detail=f"TransferSyntaxUID {syntax}: {error}",
        )
    if standard and syntax.is_compressed:
        return fail(
            f"compressed pixel data ('{known(name, SYNTAX_NAMES, 'unrecognized')}') cannot be decoded "
            f"({type(error).__name__})",
            "the file is damaged or truncated: re-export it from PACS",
            path,
            detail=str(error),
        )
    return fail(
        f"pixel data cannot be decoded ({type(error).__name__})",
        "the file is damaged or truncated: re-export it from PACS",
        path,
        detail=str(error),
    )
