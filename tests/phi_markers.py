"""A hostile site for the "nothing read from a file leaves a site" tests: marker strings in every text header, in file
and folder names (with spaces and commas) and in exception paths, and one case for each kind of failure.

Every planted string holds :data:`MARKER`; a test asserts that the marker reaches the site's local log and nowhere
the server can see.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import MPEG2MPML

MARKER = "ZQXPHI"
TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
FAILURES = ("unreadable", "permission", "bad_value", "decoder")  # training cases 0..3; later cases stay good
# write-only sysfs files: opening one for reading is refused even to root (EACCES), so the test needs no user switch
WRITE_ONLY = [Path("/sys/bus/pci/rescan"), Path("/sys/class/zram-control/hot_remove")]


def marker_text(vr: str, n: int) -> str:
    """A marker value that fits the VR's length (SH: 16 characters), with a space and a comma."""
    return f"{MARKER}{n}, J DOE"[:16] if vr == "SH" else f"{MARKER}{n}^DOE, JOHN {n}"


def plant_headers(path: Path, modality: bool = True) -> None:
    """Every text element of the file (and its Modality) holds a marker."""
    ds = pydicom.dcmread(path)
    for n, element in enumerate(ds):
        if element.VR in TEXT_VRS and element.keyword not in ("SpecificCharacterSet",):
            element.value = marker_text(element.VR, n)
    ds.InstitutionName, ds.Manufacturer = f"{MARKER} Hospital, Ward 3", f"{MARKER} Scanners, Inc."
    ds.PatientName, ds.StationName = f"{MARKER}^JANE, Q", f"{MARKER}, ST1"
    if modality:
        ds.Modality = MARKER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)


def _set_raw(path: Path, tag: int, vr: str, value: bytes) -> None:
    """Write a value that pydicom would refuse to set (e.g. a name in a decimal-string element)."""
    ds = pydicom.dcmread(path)
    value += b" " * (len(value) % 2)
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    ds.save_as(path)


# as root, an unreadable file is a link to a write-only sysfs file outside data_root: the site config must allow it
# (a path outside data_root is otherwise refused before it is read)
SITE_FIELDS = {"allow_paths_outside_data_root": True} if os.geteuid() == 0 else {}


def deny_reading(path: Path) -> None:
    """Make ``path`` unreadable: chmod for an ordinary user; for root, a link to a write-only sysfs file."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    target = next((p for p in WRITE_ONLY if p.is_file()), None)
    if target is None:
        pytest.skip("running as root and no write-only sysfs file to deny reading with")
    path.unlink()
    path.symlink_to(target)


def hostile_site(site_dir: Path) -> dict[str, str]:
    """Rewrite a synthetic site in place: marker names and headers everywhere, and training cases 0..3 broken one
    way each (see :data:`FAILURES`). Returns {failure kind: datalist item}."""
    datalist_path = site_dir / "datalist.json"
    datalist = json.loads(datalist_path.read_text())
    for split, entries in datalist.items():
        for i, entry in enumerate(entries):
            old = site_dir / entry["image"]
            case_dir = old.parent.with_name(f"{MARKER} {split} {i}, DOE JOHN")
            label = site_dir / entry["label"] if isinstance(entry.get("label"), str) else None
            shutil.move(old.parent, case_dir)
            image = case_dir / f"{MARKER} series, 1"
            shutil.move(case_dir / old.name, image)
            for f in sorted(image.iterdir()):
                plant_headers(f)
                f.rename(image / f"{MARKER} {f.stem}, x{f.suffix}")
            entry["image"] = str(image.relative_to(site_dir))
            if label is not None:  # the mask moved with its case folder
                moved = case_dir / label.relative_to(old.parent)
                entry["label"] = str(moved.rename(case_dir / f"{MARKER} label, {label.name}").relative_to(site_dir))
    datalist_path.write_text(json.dumps(datalist))
    items = {}
    for kind, entry in zip(FAILURES, datalist["training"]):
        items[kind] = f"training case #{datalist['training'].index(entry)}"
        victim = sorted((site_dir / entry["image"]).iterdir())[1]
        if kind == "unreadable":  # truncated mid-header, as an interrupted copy leaves it
            victim.write_bytes(victim.read_bytes()[:200])
        elif kind == "permission":
            deny_reading(victim)
        elif kind == "bad_value":  # a name where the orientation's numbers belong
            _set_raw(victim, 0x00200037, "DS", f"{MARKER}^SMITH\\1\\0\\0\\0\\1".encode())
        elif kind == "decoder":  # a transfer syntax no installed plugin decodes
            ds = pydicom.dcmread(victim)
            ds.file_meta.TransferSyntaxUID = MPEG2MPML
            ds.PixelData = encapsulate([ds.PixelData])
            ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
            ds.save_as(victim)
    return items
