"""Nothing read from a file leaves a site, in the real FLARE simulator (slow: about two minutes on 2 CPUs).

Two hostile sites: marker strings in every text header, in every file and folder name (with spaces and commas), in
the site's own roots and in the paths that exceptions carry; training cases 0..3 of each site fail one way each
(truncated file, permission denied, a name in a numeric header, a pixel encoding no decoder reads). site-1 skips its
bad cases and trains; site-2 refuses them and reports why. Everything the server holds afterwards -- its logs, the
error reports, the models, the TensorBoard events and cross-site results streamed to it -- must be free of markers,
while each site's own log holds them (the failures really ran there).
"""

import pytest

from oncofl.jobs.prostate_mri_seg import export
from oncofl.simulate import run_simulator
from tests.conftest import make_site
from tests.phi_markers import FAILURES, MARKER, SITE_FIELDS, hostile_site

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2"]


def server_side_bytes(workspace):
    """Every file of the server's workspace: what was serialized for, and kept by, the server."""
    files = [p for p in (workspace / "server").rglob("*") if p.is_file() and not p.is_symlink()]
    assert files, "the server wrote nothing"
    return {p: p.read_bytes() for p in files}


def test_no_marker_reaches_the_server_from_any_failure_kind(tmp_path):
    configs = tmp_path / f"{MARKER} configs, North"
    items = {}
    for site, policy in zip(SITES, ("skip", "fail")):
        config = make_site(configs, site, n_cases=7, on_unreadable_case=policy, num_workers=1, **SITE_FIELDS)
        items[site] = hostile_site(configs / site)
        assert config.is_file()
    job = export(tmp_path / "jobs", num_rounds=1, local_epochs=1, min_clients=1)

    ws = tmp_path / "ws"
    result = run_simulator(job, ws, configs, SITES, timeout=1200, log_file=tmp_path / "simulator.log")
    leaked = [str(p.relative_to(ws)) for p, data in server_side_bytes(ws).items() if MARKER.encode() in data]
    assert not leaked, f"server-side files hold a marker: {leaked}"
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]

    # the failures ran, at the sites, and were logged there in full
    site1, site2 = ((ws / s / "log.txt").read_text() for s in SITES)
    assert "skipping unusable case (on_unreadable_case=skip)" in site1 and MARKER in site1
    assert "PermissionError" in site1 and f"{MARKER}^SMITH" in site1  # the exception's path and the header value
    assert MARKER in site2
    # site-2's refusal reached the server by position and type only
    server_log = result.server_log.read_text()
    (report,) = [line for line in server_log.splitlines() if "site-2 failed task 'train'" in line]
    assert f"[site-2] {len(FAILURES)} case(s) could not be used" in report
    assert all(f"{items['site-2'][k]}, image:" in report for k in FAILURES)
    assert "(PermissionError)" in report and "(DicomReadError)" in report  # a foreign exception, and our reader's
    assert result.global_model.is_file()  # site-1 trained on its good cases
