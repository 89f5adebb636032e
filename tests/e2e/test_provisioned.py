"""A provisioned consortium on localhost: `nvflare provision` with our builders into a temp dir, the server and two
hospitals started from their own kits (mTLS, signed startup folders, the site templates), the lead submitting through
the admin console, and the refusals the security promises rest on. Every process started here is gone afterwards.
(slow: a few minutes on 2 CPUs)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import torch

from oncofl.deploy.poc import JobResults, start_kit
from oncofl.deploy.provision import Consortium
from oncofl.deploy.site import configure
from oncofl.evaluation import holdout_metric
from oncofl.provenance import PACKAGE, describe, installed
from tests.conftest import REPO
from tests.e2e.test_poc import free_port, kill_processes, processes_under, stop_and_check
from tests.e2e.test_simulator import identifiers

pytestmark = pytest.mark.slow

SITES = ["hospital-a", "hospital-b"]
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
GUARD_LINE = re.compile(r"site privacy policy: excluded (\d+) of (\d+) tensors; update norm ([\d.e+-]+) within bound")
# The committed prostate job (5 rounds x 6 epochs) with two of the three hospitals. Measured on the 2-core CI machine
# (docs/benchmarks.md): see MIN_DICE's comment there; POC with three hospitals: 0.030 -> 0.871.
MIN_DICE = 0.60
MIN_GAIN = 0.50


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, synthetic_data):
    root = tmp_path_factory.mktemp("provisioned")
    (root / "home").mkdir()
    data = root / "data"
    shutil.copytree(synthetic_data, data, ignore=shutil.ignore_patterns("cache"))
    instance = Consortium(root / "ws", port=free_port(), env_overrides={"HOME": str(root / "home")})
    instance.provision(rehearse=True)
    instance.configure_for_rehearsal(data, sites=SITES)  # what each hospital's IT does with site_setup.py
    instance.start(only=[instance.server_name, *SITES])
    try:
        yield instance
    finally:
        stop_and_check(instance, root)


def test_flare_refuses_to_start_a_tampered_kit(tmp_path, synthetic_data):
    """Our SignStartupBuilder makes FLARE itself check the kit: a changed fed_client.json (here: one added space) and
    the client exits before connecting anywhere; the intact kit passes that check."""
    consortium = Consortium(tmp_path / "ws", port=free_port(), env_overrides={"HOME": str(tmp_path)})
    consortium.provision(rehearse=True)
    kit = consortium.kit("hospital-b")
    configure(kit, data_root=synthetic_data / "site-2", cache_dir=tmp_path / "cache", gpu_ids=[])  # local/: allowed
    fed_client = kit / "startup" / "fed_client.json"
    fed_client.write_text(fed_client.read_text().replace('"is_leaf": true', '"is_leaf": true '))
    run = subprocess.run(
        ["bash", str(kit / "startup" / "sub_start.sh"), "--once"],
        env=consortium.env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode != 0 and "The following files are not secure content.\nfed_client.json" in run.stdout


def connected(consortium) -> set[str]:
    sess = consortium.session(consortium.project_admin)
    try:
        return {c.name for c in sess.get_connected_client_list()}
    finally:
        sess.close()


def test_lead_submits_the_prostate_job_through_the_console_and_it_learns(consortium, tmp_path):
    # a copy of the committed folder: the console signs what it submits in place (.__nvfl_sig.json per folder)
    job_id = consortium.submit(REPO / "jobs" / "prostate_mri_seg", via="console", user=consortium.lead)
    meta = consortium.wait(job_id, timeout=900)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert meta["submitter_name"] == consortium.lead and meta["submitter_role"] == "lead"
    assert not meta.get("byoc")  # settings only: every class comes from the oncofl installed at the site

    # every update and the submitted model passed each site's own privacy scope (the job configures no such filter),
    # and the guard that ran is the site's installed oncofl
    here = installed()
    guard_line = f"site privacy guard: {describe(here['version'], here['code_sha256'])} at {PACKAGE}"
    for site in SITES:
        log = (consortium.kit(site) / job_id / "log.txt").read_text()
        assert guard_line in log, f"{site}: the guard did not say which code it is"
        guarded = GUARD_LINE.findall(log)
        assert len(guarded) == 5 + 1, f"{site}: {len(guarded)} guarded results"  # 5 rounds + submit_model
        norms = [float(norm) for _, _, norm in guarded]
        print(f"{site}: update norms {', '.join(f'{n:.2f}' for n in norms)} (site bound 100)")
        assert all(n <= 100.0 for n in norms)

    result = JobResults(consortium.download(job_id, tmp_path / "results"))
    cross = json.loads(result.cross_site.read_text())
    assert sorted(cross) == SITES
    server_side = b"\n".join(
        f.read_bytes() for f in (result.root / "workspace").rglob("*") if f.is_file() and f.suffix != ".pt"
    )
    leaked = [s for s in identifiers(consortium.data_of("hospital-a").parent) if s.encode() in server_side]
    assert not leaked, f"server-side results hold patient identifiers or site paths: {leaked}"
    weights = torch.load(result.global_model, map_location="cpu", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    holdout = consortium.data_of("hospital-a").parent / "holdout"
    initial, final = holdout_metric(None, holdout), holdout_metric(result.global_model, holdout)
    print(f"provisioned (2 hospitals) held-out Dice: initial {initial:.3f}, final global {final:.3f}")
    assert final >= MIN_DICE and final - initial >= MIN_GAIN


def test_org_admin_and_member_submissions_are_refused(consortium):
    job = consortium.stage_job(REPO / "jobs" / "prostate_mri_seg")
    for user in (consortium.org_admin, consortium.member):
        out = consortium.admin_console([f"submit_job {job}", "bye"], user=user)
        assert f"user '{user}' is not authorized for 'submit_job'" in out, out[-2000:]
        assert not JOB_ID.search(out), out[-2000:]


def test_a_job_carrying_its_own_oncofl_cannot_replace_the_sites_guard(consortium, tmp_path):
    """An attacker with the lead's kit ships oncofl in the job (research mode's --ship-code) with a SiteUpdateGuard
    that lets every update through unbounded. FLARE builds a site's privacy filters inside the job's process, where
    the job's code would shadow the installed package; so such a job must not run at all: nobody has the byoc right."""
    from oncofl.jobs import prostate_mri_seg

    job = prostate_mri_seg.export(tmp_path / "jobs", ship_code=True)
    privacy = job / "app" / "custom" / "oncofl" / "privacy.py"
    privacy.write_text(
        privacy.read_text() + "\n\nclass SiteUpdateGuard(Filter):  # weakened\n"
        "    def __init__(self, **kwargs):\n        super().__init__()\n\n"
        "    def process(self, shareable, fl_ctx):\n        return shareable\n"
    )
    job_id = consortium.submit(job, via="console", user=consortium.lead)  # FLARE checks BYOC where it deploys
    meta = consortium.wait(job_id, timeout=300)
    assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta
    assert meta.get("byoc") is True  # FLARE derives it from the job's contents, whatever meta.json says
    assert "BYOC not permitted" in str(meta.get("job_deploy_detail")), meta
    assert not any((consortium.kit(site) / job_id / "log.txt").exists() for site in SITES)  # nothing ran anywhere


def test_job_naming_a_scope_the_sites_do_not_define_is_refused_by_them(consortium, tmp_path):
    job = tmp_path / "unfiltered"
    shutil.copytree(REPO / "jobs" / "prostate_mri_seg", job)
    meta = json.loads((job / "meta.json").read_text())
    meta.update(name="unfiltered", scope="research_unfiltered")  # tries to escape the sites' privacy filters
    (job / "meta.json").write_text(json.dumps(meta))
    job_id = consortium.submit(job, via="api")
    meta = consortium.wait(job_id, timeout=300)
    assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta
    detail = meta["job_deploy_detail"]
    for site in SITES:
        assert f"{site}: NVFLARE_ERROR: privacy scope 'research_unfiltered' is not allowed" in detail, detail
    assert not any((consortium.kit(site) / job_id / "log.txt").exists() for site in SITES)  # nothing ran


def test_clients_with_certificates_from_another_provisioning_cannot_join(consortium, tmp_path):
    """A kit from another consortium (its own root CA), and an impostor that also holds our public rootCA.pem (so it
    trusts our server) but not a certificate our CA issued: neither gets in; our own hospitals stay connected."""
    foreign = Consortium(tmp_path / "foreign", port=consortium.port, env_overrides=consortium.env_overrides)
    foreign.provision(rehearse=True)
    pristine = foreign.kit("hospital-c")
    impostor = tmp_path / "impostor" / "hospital-c"
    shutil.copytree(pristine, impostor)
    shutil.copy2(consortium.kit("hospital-a") / "startup" / "rootCA.pem", impostor / "startup" / "rootCA.pem")
    (impostor / "startup" / "signature.json").unlink()  # it cannot re-sign: drop the integrity manifest instead
    data = consortium.data_of("hospital-a").parent
    for kit in (pristine, impostor):
        configure(kit, data_root=data / "site-3", cache_dir=tmp_path / "cache" / kit.parent.name, gpu_ids=[])
        start_kit(kit, consortium.env)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert "hospital-c" not in connected(consortium)
            time.sleep(4)
        assert connected(consortium) >= set(SITES)
        assert processes_under(impostor), "the impostor gave up by itself: the test proved nothing"
        pristine_log = (pristine / "log.txt").read_text(errors="replace")
        assert "CERTIFICATE_VERIFY_FAILED" in pristine_log
    finally:
        kill_processes(processes_under(pristine) + processes_under(impostor))
    server_log = (consortium.kit(consortium.server_name) / "log.txt").read_text(errors="replace")
    assert "hospital-c" not in server_log


def kit_digest(consortium, names) -> dict[str, str]:
    out = {}
    for name in names:
        for path in sorted((consortium.kit(name) / "startup").iterdir()):
            out[f"{name}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_added_site_joins_the_running_server_and_no_other_kit_changes(consortium):
    before = kit_digest(consortium, consortium.participants())
    kit = consortium.add_site("hospital-d", "hospital_d")
    assert kit_digest(consortium, [n for n in consortium.participants() if n != "hospital-d"]) == before
    consortium.configure_for_rehearsal(consortium.data_of("hospital-a").parent, sites=["hospital-d"])
    consortium.start_site("hospital-d")  # no server restart, nobody else re-issued
    consortium.wait_for_clients([*SITES, "hospital-d"], timeout=90)
    assert os.path.samefile(consortium.kit("hospital-d"), kit)
