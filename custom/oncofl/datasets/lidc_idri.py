"""LIDC-IDRI (TCIA), as the NBIA Data Retriever downloads it -> one case per nodule >= 3 mm, sites by CT manufacturer.

Layout read (Armato et al., Med. Phys. 38:915, 2011; TCIA collection LIDC-IDRI, doi:10.7937/K9/TCIA.2015.LO9QL9SX)::

    <source>/LIDC-IDRI/LIDC-IDRI-0001/<study folder>/<series folder>/*.dcm + the readers' XML (e.g. 069.xml)

The XML (root ``LidcReadMessage``, namespace ``http://www.nih.gov``; ``ResponseHeader`` with ``SeriesInstanceUid``)
holds up to four ``readingSession``: each reader's ``unblindedReadNodule`` (``noduleID``, ``characteristics`` with
``malignancy`` 1-5, one ``roi`` per slice: ``imageZposition``, ``imageSOP_UID``, ``inclusion``, ``edgeMap``
``xCoord``/``yCoord`` in pixels) and ``nonNodule`` marks. Radiograph series carry ``IdriReadMessage`` /
``CXRreadingSession`` XML; they are not CT and are skipped.

What counts as a nodule follows pylidc (github.com/notmatthancock/pylidc, ``_populate_db/populate.py``,
``Scan.cluster_annotations``): a reader's mark is a nodule >= 3 mm when it has ``characteristics`` with no zero or
blank value (the readers' "< 3 mm" marks have none); marks are grouped into one physical nodule when the smallest
distance between their contour points (patient mm) is at most the CT's slice thickness (connected components;
the tolerance shrinks by 0.9 while a group has more than four marks). A nodule is kept when any reader marked it.

Per nodule: ``center_mm`` = the mean of the readers' centroids (each: the mean of its inclusion ROIs' contour
centroids; pixel -> patient LPS mm through the ImagePositionPatient / ImageOrientationPatient / PixelSpacing of the
SOP instance the ROI names, else of the slice at its ``imageZposition``), ``diameter_mm`` = the mean of the readers'
largest in-plane contour extents, ``malignancy`` = the median of the readers' scores. Label: median > 3 -> 1,
median < 3 -> 0, median = 3 ("indeterminate") left out -- the convention of pylidc's own example query
(malignancy > 3) and of LIDC malignancy classifiers (e.g. Shen et al., IPMI 2015; Hussein et al., IPMI 2017).

Sites: the CT's ``Manufacturer`` header -- FLamby's Fed-LIDC-IDRI (github.com/owkin/FLamby,
``flamby/datasets/fed_lidc_idri``) splits by it: GE MEDICAL SYSTEMS, Philips, SIEMENS, TOSHIBA. LIDC-IDRI has no
test split of its own; FLamby holds out 20% of scans stratified by manufacturer. Here a patient goes to
``holdout/`` when the first byte of the SHA-256 of its folder name is below 20% of 256 (deterministic, ~20% per
manufacturer, every nodule of a patient on the same side).

A CT series without its XML is refused, not skipped: every LIDC-IDRI CT series ships with one, so a missing XML
means an interrupted download, and skipping it would silently drop that CT's nodules from the sites.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist, pdist

from .common import DatasetCase, DatasetError, require, site_name

NAME = "lidc_idri"
TASK = "lung_nodule_cls"
SUMMARY = "LIDC-IDRI (TCIA DICOM + readers' XML): nodules >= 3 mm, median malignancy, sites by CT manufacturer"
HOLDOUT_FRACTION = 0.2
_HEADER_TAGS = ["SOPInstanceUID", "Modality", "Manufacturer", "ImagePositionPatient", "ImageOrientationPatient",
                "PixelSpacing", "SliceThickness", "SeriesInstanceUID"]  # fmt: skip


@dataclass(frozen=True)
class Mark:
    """One reader's nodule >= 3 mm.

    Args:
        points: its inclusion contour points, ``[n, 3]`` patient LPS mm.
        centroid: the mean of its ROIs' contour centroids (LPS mm).
        diameter: its largest in-plane contour extent (mm).
        malignancy: the reader's malignancy score (1-5).
    """

    points: np.ndarray
    centroid: np.ndarray
    diameter: float
    malignancy: int


@dataclass(frozen=True)
class Geometry:
    """A CT series' slice geometry, read from its headers.

    Args:
        slices: per SOP Instance UID, (ImagePositionPatient, row direction, column direction, PixelSpacing).
        manufacturer: the Manufacturer header.
        slice_thickness: the SliceThickness header (mm), the clustering tolerance.
        uid: the SeriesInstanceUID.
    """

    slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    manufacturer: str
    slice_thickness: float
    uid: str

    def to_mm(self, sop: str, z: float, xy: np.ndarray) -> np.ndarray:
        """Pixel (column x, row y) points of the slice ``sop`` (else the slice nearest ``z``) -> LPS mm."""
        if sop not in self.slices:
            sop = min(self.slices, key=lambda s: abs(self.slices[s][0][2] - z))
        ipp, row_dir, col_dir, spacing = self.slices[sop]
        return ipp + xy[:, :1] * spacing[1] * row_dir + xy[:, 1:] * spacing[0] * col_dir


def _local(root: ET.Element) -> ET.Element:
    """Strip every namespace: the CT XML uses http://www.nih.gov, older files others."""
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return root


def read_geometry(series: Path) -> Geometry | None:
    """The series' geometry, or None when it is not a CT (the LIDC-IDRI radiographs)."""
    slices, first = {}, None
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        if first is None:
            first = ds
            if str(ds.get("Modality", "")) != "CT":
                return None
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        spacing = np.asarray([float(v) for v in ds.PixelSpacing])
        slices[str(ds.SOPInstanceUID)] = (np.asarray([float(v) for v in ds.ImagePositionPatient]), iop[:3], iop[3:],
                                          spacing)  # fmt: skip
    if first is None:
        return None
    thickness = float(first.get("SliceThickness") or 0) or 2.5
    return Geometry(slices, str(first.get("Manufacturer", "")).strip(), thickness, str(first.SeriesInstanceUID))


def _mark(nodule: ET.Element, geometry: Geometry) -> Mark | None:
    """A reader's ``unblindedReadNodule`` as a :class:`Mark`, None for a "< 3 mm" mark (pylidc's rule)."""
    chars = nodule.find("characteristics")
    if chars is None or len(chars) == 0 or any((c.text or "").strip() in ("", "0") for c in chars):
        return None
    rois = []
    for roi in nodule.findall("roi"):
        if (roi.findtext("inclusion") or "TRUE").strip().upper() != "TRUE":
            continue
        xy = np.asarray([[float(e.findtext("xCoord")), float(e.findtext("yCoord"))] for e in roi.findall("edgeMap")])
        if len(xy):
            rois.append(geometry.to_mm(roi.findtext("imageSOP_UID", "").strip(), float(roi.findtext("imageZposition")),
                                       xy))  # fmt: skip
    if not rois:
        return None
    diameter = max(float(pdist(r).max()) if len(r) > 1 else 0.0 for r in rois)
    centroid = np.mean([r.mean(axis=0) for r in rois], axis=0)
    return Mark(np.concatenate(rois), centroid, diameter, int(chars.findtext("malignancy")))


def read_marks(xml: Path, geometry: Geometry) -> list[Mark] | None:
    """Every reader's nodules >= 3 mm in a CT's XML; None when the XML is not a CT reading (a radiograph's)."""
    root = _local(ET.parse(xml).getroot())
    if root.tag != "LidcReadMessage":
        return None
    return [m for s in root.findall("readingSession") for n in s.findall("unblindedReadNodule")
            if (m := _mark(n, geometry)) is not None]  # fmt: skip


def cluster(marks: list[Mark], tolerance: float, factor: float = 0.9, min_tolerance: float = 0.1) -> list[list[Mark]]:
    """pylidc's ``cluster_annotations`` (metric "min"): connected components of "closest contour points within
    ``tolerance`` mm", the tolerance shrunk by ``factor`` while a group has more than four marks (four readers)."""
    if len(marks) < 2:
        return [marks] if marks else []
    distance = np.zeros((len(marks), len(marks)))
    for i in range(len(marks)):
        for j in range(i + 1, len(marks)):
            distance[i, j] = distance[j, i] = cdist(marks[i].points, marks[j].points).min()
    while True:
        n, ids = connected_components(distance <= tolerance, directed=False)
        groups = [[m for m, k in zip(marks, ids) if k == g] for g in range(n)]
        if max(map(len, groups)) <= 4 or tolerance * factor < min_tolerance:
            return groups
        tolerance *= factor


def label(malignancy: float) -> int | None:
    """Median malignancy > 3 -> 1, < 3 -> 0, = 3 -> None (left out)."""
    return None if malignancy == 3 else int(malignancy > 3)


def held_out(patient: str) -> bool:
    """Whether a patient's nodules go to ``holdout/`` (see the module doc)."""
    return hashlib.sha256(patient.encode()).digest()[0] < HOLDOUT_FRACTION * 256


def _nodule_cases(series: Path, source: Path, patient: str, geometry: Geometry, marks: list[Mark]) -> list:
    cases = []
    for group in cluster(marks, geometry.slice_thickness):
        malignancy = float(np.median([m.malignancy for m in group]))
        if label(malignancy) is None:
            continue
        extra = {
            "center_mm": [round(float(v), 2) for v in np.mean([m.centroid for m in group], axis=0)],
            "diameter_mm": round(float(np.mean([m.diameter for m in group])), 2),
            "malignancy": malignancy,
            "readers": len(group),
        }
        cases.append(DatasetCase(site_name(geometry.manufacturer), series.relative_to(source).as_posix(),
                                 label(malignancy), "testing" if held_out(patient) else "training", extra))  # fmt: skip
    return cases


def _series_folders(patients: Path) -> list[tuple[str, Path]]:
    """(patient, series folder) of every folder holding DICOM files, two levels under each patient."""
    return [(p.name, s) for p in sorted(patients.glob("LIDC-IDRI-*")) if p.is_dir()
            for s in sorted(p.glob("*/*")) if s.is_dir() and any(s.glob("*.dcm"))]  # fmt: skip


def cases(source: Path, out: Path) -> list[DatasetCase]:
    """Every nodule >= 3 mm with a median malignancy other than 3, read in place (``out`` is not used)."""
    require(source, ["LIDC-IDRI"], "LIDC-IDRI")
    patients = source / "LIDC-IDRI"
    found, without_xml = [], []
    for patient, series in _series_folders(patients):
        geometry = read_geometry(series)
        if geometry is None:
            continue
        readings = [m for xml in sorted(series.glob("*.xml")) if (m := read_marks(xml, geometry)) is not None]
        if not readings:
            without_xml.append(series.relative_to(source).as_posix())
            continue
        found += _nodule_cases(series, source, patient, geometry, [m for r in readings for m in r])
    if without_xml:
        raise DatasetError(
            "a LIDC-IDRI CT series has no readers' XML (an interrupted download)",
            fix="download those series again with the NBIA Data Retriever (the XML comes with each CT series)",
            path=str(source),
            detail="series without XML: " + ", ".join(without_xml[:10]),
        )
    if not found:
        raise DatasetError(
            "no LIDC-IDRI CT series with nodules was found",
            fix="give the folder that holds LIDC-IDRI/LIDC-IDRI-XXXX/<study>/<series>/",
            path=str(patients),
        )
    return found
