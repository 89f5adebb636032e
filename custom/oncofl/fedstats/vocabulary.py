"""The fixed vocabulary of the federated statistics: group (FLARE "dataset") names, feature names, vendors, CT kernels.

Nothing read from a file leaves a site as text: a manufacturer is mapped to :data:`VENDOR_SLUGS` (via the site data
check's :func:`oncofl.datacheck.vendor_category`), a CT kernel is kept only if it is on :data:`CT_KERNELS` (else
``other``), a label only as a small class number. Model names are not reported at all (too free-form to map safely).
"""

from __future__ import annotations

import math
import re

from ..datacheck import vendor_category
from ..errors import known

ALL = "all"
SPLIT_GROUPS = ("training", "validation")
CASES = "unreadable"  # 1 per skipped case, 0 per read case: its count is a group's number of cases
LABEL = "label"  # classification: the class of a case (its sum counts the positive cases)
LEVEL = "intensity_p99"  # the raw intensity level of an image (rescaled values; HU for CT): where a gain shows
INTENSITY = "intensity"  # sampled voxels (HU for CT, scaled for MR / MG): the histogram the network sees
# datacheck's vendor names -> the slugs used in group names; anything else (or empty) is "other" / "unknown"
VENDOR_SLUGS = {
    "SIEMENS": "siemens",
    "GE": "ge",
    "PHILIPS": "philips",
    "CANON": "canon",  # Canon Medical, formerly Toshiba Medical
    "FUJIFILM": "fujifilm",
    "HOLOGIC": "hologic",
    "HITACHI": "hitachi",
    "AGFA": "agfa",
    "CARESTREAM": "carestream",
    "KONICA MINOLTA": "konica_minolta",
    "PLANMED": "planmed",
    "IMS GIOTTO": "ims_giotto",
    "UNITED IMAGING": "united_imaging",
    "SAMSUNG": "samsung",
    "SHIMADZU": "shimadzu",
    "unknown": "unknown",
}
# CT reconstruction kernels the statistics may name (public vendor product terms), compared case-insensitively
CT_KERNELS = (
    "STANDARD", "SOFT", "LUNG", "BONE", "BONEPLUS", "DETAIL", "CHEST", "EDGE", "SHARP",  # GE
    "B10f", "B20f", "B30f", "B31f", "B35f", "B40f", "B41f", "B45f", "B50f", "B60f", "B70f", "B80f",  # Siemens
    "Br32", "Br36", "Br38", "Br40", "Br44", "Br49", "Br54", "Br59", "Br64", "Br69", "Qr40", "Bl57",  # Siemens
    "Bl56", "Bl64", "Bv36", "Bv40", "Hr32", "Hr36", "Hr38", "Hr40", "Hr44", "Hr49", "Hr59", "Hr64", "Hr68",  # Siemens
    "Qr36", "Qr44", "Qr49", "Qr54", "Qr59", "Qr69",  # Siemens (quantitative, dual-energy)
    "H10s", "H20s", "H30s", "H31s", "H40s", "H41s", "H45s", "H50s", "H60s", "H70s",  # Siemens head
    "I26f", "I30f", "I31f", "I40f", "I41f", "I44f", "I50f", "I70f",  # Siemens iterative (SAFIRE)
    "FC01", "FC02", "FC03", "FC04", "FC07", "FC08", "FC13", "FC17", "FC18", "FC30", "FC51", "FC52", "FC86",  # Canon
    "A", "B", "C", "D", "L", "YA", "YB", "YC", "YD",  # Philips
)  # fmt: skip
_KERNELS_LOWER = {k.lower(): k for k in CT_KERNELS}
MAX_LABEL_GROUP = 9  # class numbers 0..9 name their own group; any other label is "label=other"
# Siemens' ADMIRE / SAFIRE strength suffix on a base kernel: Br40d, Br40f, Hr40f -> Br40, Hr40 (I30f stays: listed)
_KERNEL_SUFFIX = re.compile(r"^([A-Z][a-z]?\d{2})[a-z]$")


def vendor_slug(manufacturer: str) -> str:
    """A free-text Manufacturer value as one of :data:`VENDOR_SLUGS`' values, else ``other``.

    Args:
        manufacturer: the header's text, as read (never returned).
    """
    return VENDOR_SLUGS.get(vendor_category(manufacturer or ""), "other")


def _kernel_of(text: str) -> str | None:
    """One kernel text as a listed name (exact, else its base without a one-letter suffix), None if not listed."""
    name = _KERNELS_LOWER.get(text.lower())
    base = _KERNEL_SUFFIX.match(text)
    return name or (_KERNELS_LOWER.get(base.group(1).lower()) if base else None)


def kernel_name(kernel: object) -> str:
    """A CT ConvolutionKernel value (text, or any sequence of texts such as pydicom's ``MultiValue``: its first
    element that is listed) as a name of :data:`CT_KERNELS`, else ``other`` (``unknown`` when absent).

    Args:
        kernel: the header's value, as read (never returned unless it is on the list).
    """
    if kernel is None or isinstance(kernel, (str, bytes)):
        values = [kernel.decode("latin-1") if isinstance(kernel, bytes) else kernel or ""]
    else:
        try:
            values = [str(v) for v in kernel]
        except TypeError:  # a single non-text value (a number)
            values = [str(kernel)]
    texts = [v.strip() for v in values if v.strip()]
    if not texts:
        return "unknown"
    found = next((name for name in map(_kernel_of, texts) if name), "other")
    return known(found, (*CT_KERNELS, "other"))


def label_group(label: object) -> str | None:
    """The group of a classification case's label (``label=0`` .. ``label=9``, else ``label=other``); None for a
    segmentation case (its label is a mask file).

    Args:
        label: the datalist's label: a number, or a mask path.
    """
    if not isinstance(label, (int, float)) or isinstance(label, bool):
        return None
    if math.isfinite(label) and float(label).is_integer() and 0 <= label <= MAX_LABEL_GROUP:
        return f"label={int(label)}"
    return "label=other"


def vendor_group(slug: str) -> str:
    """The group name of a vendor slug (``vendor=siemens``)."""
    return f"vendor={known(slug, (*VENDOR_SLUGS.values(), 'other'))}"


def kernel_group(name: str) -> str:
    """The group name of a kernel (``kernel=Br40``)."""
    return f"kernel={known(name, (*CT_KERNELS, 'unknown'))}"


def group_names() -> frozenset[str]:
    """Every group name the statistics may send: the vocabulary's, nothing read from a file."""
    labels = [f"label={k}" for k in (*range(MAX_LABEL_GROUP + 1), "other")]
    vendors = [f"vendor={v}" for v in (*VENDOR_SLUGS.values(), "other")]
    kernels = [f"kernel={k}" for k in (*CT_KERNELS, "unknown", "other")]
    return frozenset((ALL, *SPLIT_GROUPS, *labels, *vendors, *kernels))


def partition_of(group: str) -> str | None:
    """The partition a group belongs to (``split``, ``label``, ``vendor``, ``kernel``); None for ``all``.

    Every case is in ``all`` and in at most one group of each partition.

    Args:
        group: a group name of :func:`group_names`.
    """
    if group == ALL:
        return None
    return "split" if group in SPLIT_GROUPS else group.partition("=")[0]
