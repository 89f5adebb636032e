import pytest

from oncofl.privacy import REDACTED, OutgoingGuard


def test_redacts_known_site_strings_and_any_path():
    guard = OutgoingGuard(["/mnt/pacs/export"])
    text = guard.redact(
        "bad file /mnt/pacs/export/p1/IM_1.dcm, cache at /scratch/oncofl/abc.npz, also C:\\data\\x.dcm and ~/a/b"
    )
    assert "/mnt" not in text and "/scratch" not in text and "C:\\data" not in text and "~/a" not in text
    assert text == "bad file " + REDACTED  # a path may hold spaces: the rest of its line goes with it
    lines = guard.redact("x C:\\data\\x.dcm y\nthen ~/a/b\nkept line")
    assert lines == f"x {REDACTED}\nthen {REDACTED}\nkept line"


def test_keeps_ordinary_messages():
    msg = "[site-2] training case #3, image: slice spacing is not uniform (6.00 mm where the series has 3.00 mm)"
    assert OutgoingGuard().redact(msg) == msg
    msg = "compressed pixel data ('MPEG2 Main Profile / Main Level') cannot be decoded (NotImplementedError)"
    assert OutgoingGuard().redact(msg) == msg


def test_metrics_must_be_named_finite_floats():
    assert OutgoingGuard.metrics({"val_dice": 0.5}) == {"val_dice": 0.5}
    with pytest.raises(ValueError):
        OutgoingGuard.metrics({"val dice for /data/x": 0.5})
    with pytest.raises(ValueError):
        OutgoingGuard.metrics({"val_dice": float("nan")})


def test_dicom_identifiers_are_redacted():
    text = OutgoingGuard().redact("UID 1.2.826.0.1.3680043.8.498.123, study 20240131, case #3 at 2.5 mm")
    assert "1.2.826" not in text and "20240131" not in text
    assert "case #3 at 2.5 mm" in text
    text = OutgoingGuard().redact("case #3 at 2.5 mm: PatientName VAN DER BERG^JOHN^A, born 19700101")
    assert text == f"case #3 at 2.5 mm: PatientName VAN DER {REDACTED}"  # a name's components hold spaces


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


def test_redaction_runs_in_linear_time_on_crafted_text():
    """A crafted 16k-character string took the old patterns over a second (quadratic backtracking: 160k would take
    minutes); here every crafted shape of 160k characters must finish, all together, well inside a minute."""
    import subprocess
    import sys

    shapes = ["-a", "a-", "/a ", "a^", "1.", "1" * 9 + ".", "C:\\a ", "~/", "\\\\a ", "a" * 50 + "/", "'/x, "]
    script = (
        "from oncofl.privacy import OutgoingGuard\n"
        "g = OutgoingGuard(['/data/site root, A', 'C:\\\\pacs'])\n"
        f"for s in {shapes!r}:\n"
        "    g.redact(s * (160_000 // len(s)))\n"
        "    g.redact((s * (160_000 // len(s))).replace(' ', '\\n'))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_whole_paths_with_spaces_commas_windows_and_configured_roots_first():
    guard = OutgoingGuard(["/data/Site Root, North", "D:\\PACS Export"])
    cases = {
        "failed: /data/Site Root, North/DOE, JOHN 1970/IM 1.dcm (permission)": "failed: ",
        "[Errno 13] Permission denied: '/srv/DOE, JOHN 1970/series 1'": "[Errno 13] Permission denied: '",
        "cannot open D:\\PACS Export\\SMITH JANE\\1.dcm now": "cannot open ",
        "cannot open E:\\other\\SMITH JANE\\1.dcm": "cannot open ",
        "share \\\\pacs01\\export\\DOE JOHN\\x.dcm": "share ",
        "relative cases/DOE, JOHN/dicom is missing": "relative ",
        "root alone /data/Site Root, North": "root alone ",
        "file:///home/DOE JOHN/x": "",
    }
    for text, kept in cases.items():
        assert guard.redact(text) == kept + REDACTED, text
    # the configured root is removed whole before any pattern runs: no fragment of it survives
    assert "North" not in guard.redact("x=(/data/Site Root, North)") and "PACS" not in guard.redact("D:\\PACS Export")
