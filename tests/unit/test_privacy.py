import pytest

from oncofl.privacy import REDACTED, OutgoingGuard


def test_redacts_known_site_strings_and_any_path():
    guard = OutgoingGuard(["/mnt/pacs/export"])
    text = guard.redact(
        "bad file /mnt/pacs/export/p1/IM_1.dcm, cache at /scratch/oncofl/abc.npz, also C:\\data\\x.dcm and ~/a/b"
    )
    assert "/mnt" not in text and "/scratch" not in text and "C:\\data" not in text and "~/a" not in text
    assert text.count(REDACTED) == 4


def test_keeps_ordinary_messages():
    msg = "[site-2] training case #3, image: slice spacing is not uniform (6.00 mm where the series has 3.00 mm)"
    assert OutgoingGuard().redact(msg) == msg


def test_metrics_must_be_named_finite_floats():
    assert OutgoingGuard.metrics({"val_dice": 0.5}) == {"val_dice": 0.5}
    with pytest.raises(ValueError):
        OutgoingGuard.metrics({"val dice for /data/x": 0.5})
    with pytest.raises(ValueError):
        OutgoingGuard.metrics({"val_dice": float("nan")})


def test_dicom_identifiers_are_redacted():
    text = OutgoingGuard().redact(
        "PatientName SMITH^JOHN^A, UID 1.2.826.0.1.3680043.8.498.123, study 20240131, case #3 at 2.5 mm"
    )
    assert "SMITH" not in text and "1.2.826" not in text and "20240131" not in text
    assert "case #3 at 2.5 mm" in text


def test_phi_guard_filter_cleans_what_leaves_the_site():
    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.fl_context import FLContext

    from oncofl.privacy import PHIGuardFilter

    weights = {"w": np.arange(4.0)}
    shareable = DXO(DataKind.WEIGHTS, weights, meta={"note": "from /data/site1/p1", "n": 3}).to_shareable()
    shareable.set_header("oncofl_error", "DOE^JANE failed at /mnt/pacs/x.dcm")
    out = PHIGuardFilter().process(shareable, FLContext())
    assert "DOE" not in out.get_header("oncofl_error") and "/mnt" not in out.get_header("oncofl_error")
    dxo = from_shareable(out)
    assert dxo.meta["note"] == "from " + REDACTED and dxo.meta["n"] == 3
    np.testing.assert_array_equal(dxo.data["w"], weights["w"])
    bad = DXO(DataKind.METRICS, {"val_dice": float("nan")}).to_shareable()
    with pytest.raises(ValueError):
        PHIGuardFilter().process(bad, FLContext())
