import json

from oncofl.datacheck import check_site
from oncofl.site_config import load_site_config
from tests.conftest import make_site


def test_report_counts_mix_spacing_and_every_unreadable_file(tmp_path):
    config = load_site_config(make_site(tmp_path, n_cases=5), site_name="site-1")
    cases = json.loads(config.datalist.read_text())
    bad_slice = sorted((config.data_root / cases["training"][1]["image"]).iterdir())[2]
    bad_slice.write_bytes(b"not dicom at all")
    cases["training"][2]["image"] = "cases/nowhere/dicom"
    config.datalist.write_text(json.dumps(cases))

    report = check_site(config)
    summary = report.summary()
    assert summary["cases"] == {"training": 4, "validation": 1}
    assert summary["modalities"] == {"MR": 3} and summary["manufacturers"] == {"SIEMENS": 3}
    assert summary["spacing_mm"]["median"] == [2.5, 2.5, 4.0]
    assert len(summary["intensity_p1_p50_p99"]) == 3
    assert sum(summary["unreadable"].values()) == 2 and not report.ok
    local = report.local_text()
    assert str(bad_slice) in local and "training case #2" in local and "Fix:" in local
    text = json.dumps(summary)  # the aggregate view: no path, no patient identifier
    assert str(tmp_path) not in text and "SYN-" not in text and "SYNTHETIC" not in text


def test_check_script_exit_codes(tmp_path):
    import subprocess
    import sys

    config = make_site(tmp_path, n_cases=3)
    script = ["-m", "oncofl.cli", "check-site"]  # `oncofl check-site`
    ok = subprocess.run([sys.executable, *script, "--config", str(config), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["cases"] == {"training": 2, "validation": 1}
    missing = subprocess.run(
        [sys.executable, *script, "--config", str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_aggregates_hold_only_fixed_vocabularies_and_numbers(tmp_path):
    """Free-text headers (Manufacturer, Modality, names) are counted as categories, never copied; every kind of bad
    case is counted by our fixed problem text and type; `check-site --json` prints none of the planted markers."""
    import subprocess
    import sys

    from tests.phi_markers import FAILURES, MARKER, SITE_FIELDS, hostile_site

    config_file = make_site(tmp_path / "ZQXPHI root, North", n_cases=7, **SITE_FIELDS)
    config = load_site_config(config_file, site_name="site-1")
    hostile_site(config.data_root)
    for decode in (False, True):
        report = check_site(config, decode=decode)
        summary = report.summary()
        assert MARKER not in json.dumps(summary), decode
        bad = sum(summary["unreadable"].values())
        good = summary["cases"]["training"] + summary["cases"]["validation"] - bad
        assert summary["modalities"] == {"other": good} and summary["manufacturers"] == {"other": good}
        # headers only: every failure but the missing decoder (the reader's header checks run without decoding)
        assert bad == (len(FAILURES) if decode else len(FAILURES) - 1)
        if decode:  # by our own problem text and the exception's type
            assert summary["unreadable"]["ImageOrientationPatient must hold 6 finite numbers (DicomReadError)"] == 1
        assert MARKER in report.local_text()  # the site's own view keeps what it read
    out = subprocess.run(
        [sys.executable, "-m", "oncofl.cli", "check-site", "--config", str(config_file), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and json.loads(out.stdout)["site"] == "site-1" and MARKER not in out.stdout


def test_vendors_and_modalities_map_to_known_names():
    from oncofl.datacheck import modality_category, vendor_category

    assert vendor_category("GE MEDICAL SYSTEMS") == "GE" and vendor_category("Philips Medical Systems") == "PHILIPS"
    assert vendor_category("SIEMENS") == "SIEMENS" and vendor_category("TOSHIBA_MEC") == "CANON"
    assert vendor_category("Dr. Smith's scanner, Ward 3") == "other" and vendor_category("  ") == "unknown"
    assert modality_category("mr") == "MR" and modality_category("DOE^JOHN") == "other"
