"""The fixed vocabulary of the federated statistics: group (FLARE "dataset") names, feature names, vendors, CT kernels.

Nothing read from a file leaves a site as text: a manufacturer is mapped to :data:`VENDOR_SLUGS` (via the site data
check's :func:`oncofl.datacheck.vendor_category`), a CT kernel is kept only if it is on :data:`CT_KERNELS` (else
``other``), a label only as a small class number. Model names are not reported at all (too free-form to map safely).
"""

from __future__ import annotations

import math

from ..datacheck import vendor_category
from ..errors import known

ALL = "all"
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
    "FC01", "FC02", "FC03", "FC04", "FC07", "FC08", "FC13", "FC17", "FC18", "FC30", "FC51", "FC52", "FC86",  # Canon
    "A", "B", "C", "D", "L", "YA", "YB", "YC", "YD",  # Philips
)  # fmt: skip
_KERNELS_LOWER = {k.lower(): k for k in CT_KERNELS}
MAX_LABEL_GROUP = 9  # class numbers 0..9 name their own group; any other label is "label=other"


def vendor_slug(manufacturer: str) -> str:
    """A free-text Manufacturer value as one of :data:`VENDOR_SLUGS`' values, else ``other``.

    Args:
        manufacturer: the header's text, as read (never returned).
    """
    return VENDOR_SLUGS.get(vendor_category(manufacturer or ""), "other")


def kernel_name(kernel: object) -> str:
    """A CT ConvolutionKernel value (text or a list of texts) as a name of :data:`CT_KERNELS`, else ``other``
    (``unknown`` when absent).

    Args:
        kernel: the header's value, as read (never returned unless it is on the list).
    """
    values = [str(v) for v in kernel] if isinstance(kernel, (list, tuple)) else [str(kernel or "")]
    text = values[0].strip().lower() if values else ""
    if not text:
        return "unknown"
    return known(_KERNELS_LOWER.get(text, "other"), CT_KERNELS)


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
