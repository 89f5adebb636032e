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
