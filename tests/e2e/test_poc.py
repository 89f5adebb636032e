"""The real POC on localhost: a FLARE server, three hospital clients and admin consoles over mTLS, each test with its
own port, workspace and HOME; every process it started is gone afterwards (slow: minutes on 2 CPUs)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time

import psutil
import pytest
import torch

from oncofl import cli
from oncofl.deploy.poc import LEAD, ORG_ADMIN, PROJECT_ADMIN, SERVER, SITES, JobResults, Poc
from oncofl.evaluation import holdout_metric
from oncofl.jobs.prostate_mri_seg import export
from oncofl.model_card import write_model_card
from oncofl.predict.job import read_job_settings
from tests.e2e.test_simulator import identifiers

pytestmark = pytest.mark.slow

# The console test runs the committed prostate job's schedule (5 rounds x 6 epochs). Measured on the 2-core CI machine
# (docs/benchmarks.md): held-out Dice 0.030 -> 0.871 in the POC demo, 0.83-0.88 in the simulator. A 3 x 4 schedule
# was too short to assert on: 0.19-0.70 over four runs.
MIN_POC_DICE = 0.60
MIN_POC_GAIN = 0.50
# what each hospital's site privacy scope (local/privacy.json, not the job) logs for every update it lets out
GUARD_LINE = re.compile(r"site privacy policy: excluded (\d+) of (\d+) tensors; update norm ([\d.e+-]+) within bound")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(root) -> list[psutil.Process]:
    """Live processes whose command line names this test's POC folder (and nothing else's)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(root) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def poc(tmp_path, synthetic_data):
    """Prepared and started; stopped afterwards, asserting that no process it started survives."""
    (tmp_path / "home").mkdir()
    data = tmp_path / "data"  # a private copy: tests corrupt files in it
    shutil.copytree(synthetic_data, data, ignore=shutil.ignore_patterns("cache"))
    instance = Poc(tmp_path / "poc", port=free_port(), env_overrides={"HOME": str(tmp_path / "home")})
    instance.prepare(data=data)
    try:
        instance.start()  # inside: a start that fails half way still gets everything it started stopped
        yield instance
    finally:
        stop_and_check(instance, instance.root)


def kill_processes(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=20)


def stop_and_check(instance, root) -> None:
    """Stop a running deployment and assert that no process it started (or anything naming ``root``) survives;
    leftovers are killed, never left behind, but the test fails."""
    seen = {pid for pids in instance.running_pids().values() for pid in pids}
    forced = instance.stop()
    time.sleep(1)
    leftovers = [p.pid for p in processes_under(root)] + [p for p in seen if psutil.pid_exists(p)]
    kill_processes([p for p in map(_proc_or_none, leftovers) if p])
    assert not leftovers, f"processes still alive after stop: {leftovers}"
    assert not forced, f"stop had to kill {forced}: FLARE's shutdown and the kits' local stop both failed"


def _proc_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def small_job(tmp_path, num_rounds=2, local_epochs=2, dropout_timeout=30):
    return export(tmp_path / "jobs", num_rounds=num_rounds, local_epochs=local_epochs, dropout_timeout=dropout_timeout)


def test_admin_console_submission_learns_and_results_download(poc, tmp_path, synthetic_data):
    job_id = poc.submit(small_job(tmp_path, num_rounds=5, local_epochs=6), via="console", user=LEAD)
    meta = poc.wait(job_id, timeout=900)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert meta["submitter_name"] == LEAD

    # in the POC too, every update and the submitted model passed each hospital's own privacy scope, which the job
    # does not configure (POC kits get the provisioned kits' local/privacy.json), and no log reached the server
    for site in SITES:
        log = (poc.kit(site) / job_id / "log.txt").read_text()
        assert "site privacy guard: oncofl" in log, f"{site}: the site scope's guard did not run"
        # every training result the site sent (a slow site may miss a round) and its submitted model: guarded
        trained = len(re.findall(r"round \d+: global val_dice", log))
        assert trained and len(GUARD_LINE.findall(log)) >= trained, f"{site}: not every result was guarded"
        # FLARE's site log streamer would have added a JobLogStreamer to the job as deployed at the site
        deployed = list((poc.kit(site) / job_id).glob("app_*/config/config_fed_client.json"))
        assert deployed and all("LogStreamer" not in p.read_text() for p in deployed), f"{site}: logs streamed"

    result = JobResults(poc.download(job_id, tmp_path / "results"))
    weights = torch.load(result.global_model, map_location="cpu", weights_only=True)["model"]
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    cross = json.loads(result.cross_site.read_text())
    assert sorted(cross) == list(SITES)
    for site in SITES:
        assert {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES} == set(cross[site])
    assert sorted(p.name for p in result.tb_events.iterdir()) == list(SITES)
    participation = json.loads((result.cross_site.parents[1] / "participation.json").read_text())
    assert [r["contributed"] for r in participation["rounds"]] == [list(SITES)] * 5 and not participation["dropped"]

    server_side = b"\n".join(
        f.read_bytes() for f in (result.root / "workspace").rglob("*") if f.is_file() and f.suffix != ".pt"
    )
    leaked = [s for s in identifiers(tmp_path / "data") if s.encode() in server_side]
    assert not leaked, f"server-side results hold patient identifiers or site paths: {leaked}"

    initial = holdout_metric(None, synthetic_data / "holdout")
    final = holdout_metric(result.global_model, synthetic_data / "holdout")
    print(f"POC held-out Dice: initial {initial:.3f}, final global {final:.3f}")
    assert final >= MIN_POC_DICE and final - initial >= MIN_POC_GAIN

    # the downloaded result is all the model card and prediction need: the card from its records, predict's task,
    # network, preprocessing and global model from its server folder
    card = write_model_card(result.root).read_text()
    assert card.startswith("# Model card: prostate_mri_seg (`prostate_seg`)")
    assert f"- **Sites**: 3 ({', '.join(sorted(SITES))})" in card
    assert all(f"| {r['round']} | 3 of 3 | {', '.join(sorted(SITES))} |" in card for r in participation["rounds"])
    assert read_job_settings(result.root).global_model == result.global_model
    case = json.loads((synthetic_data / "holdout" / "datalist.json").read_text())["testing"][0]["image"]
    out = tmp_path / "predicted"
    assert cli.main(["predict", "--job", str(result.root), "--input", str(synthetic_data / "holdout" / case),
                     "--out", str(out)]) == 0  # fmt: skip
    assert (out / "dicom" / "seg.dcm").is_file()


def test_three_submission_paths_keep_gpu_requirements_and_roles_are_enforced(poc, tmp_path):
    """Console, `nvflare job submit` and the Session API: each job's per-site GPU spec reaches the server intact.
    These CPU-only hospitals offer no GPU, so the scheduler must hold the jobs back instead of running them."""
    job = small_job(tmp_path)
    ids = {via: poc.submit(job, via=via, gpus_per_site=1) for via in ("console", "cli", "api")}
    time.sleep(8)  # several scheduler passes
    sess = poc.session(PROJECT_ADMIN)
    try:
        for via, job_id in ids.items():
            meta = sess.get_job_meta(job_id)
            assert meta["resource_spec"] == {s: {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8} for s in SITES}, via
            assert meta["status"] == "SUBMITTED", f"{via}: a GPU job was dispatched to CPU-only sites"
            sess.delete_job(job_id)
    finally:
        sess.close()
    refused = poc.admin_console([f"submit_job {poc.stage_job(job)}", "bye"], user=ORG_ADMIN)
    assert "not authorized" in refused.lower() or "authorization" in refused.lower(), refused[-2000:]
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", refused), refused[-2000:]


def test_site_with_unreadable_data_is_reported_and_the_others_finish(poc, tmp_path):
    victim = sorted((poc.data_of("hospital-c") / "cases" / "case_0004" / "dicom").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # an interrupted copy
    job_id = poc.submit(small_job(tmp_path, local_epochs=1), via="cli")
    meta = poc.wait(job_id, timeout=900)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    server_log = poc.job_file(job_id, "log.txt").read_text()
    assert "hospital-c failed task 'train'" in server_log and "Fix: re-export the complete series" in server_log
    assert str(poc.data) not in server_log and victim.name not in server_log
    rounds = poc.participation(job_id)["rounds"]
    assert [r["contributed"] for r in rounds] == [["hospital-a", "hospital-b"]] * 2
    assert "no update from hospital-c" in server_log


def test_killed_client_drops_out_and_rejoins_after_restart(poc, tmp_path):
    # a dead site is only declared disconnected after the server's heart_beat_timeout (FLARE: 600 s) plus 60 s; until
    # then a round waits for it, as for any live site, unless the job sets a round deadline: this one does
    job = export(tmp_path / "jobs", num_rounds=6, local_epochs=2, dropout_timeout=30, round_deadline=120)
    job_id = poc.submit(job, via="api")
    wait_for_round(poc, job_id, 1)
    killed = poc.kill("hospital-c")  # power cut: client, its job process and its supervisor loop
    assert killed
    wait_for_completed_rounds(poc, job_id, 2)  # a round finished with the two remaining hospitals
    poc.start_site("hospital-c")  # the hospital's IT restarts the client from its kit

    chain, meta = poc.follow(job_id, timeout=900, rejoin=True)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert len(chain) == 2, chain
    first, second = (poc.participation(j)["rounds"] for j in chain)
    assert first[0]["contributed"] == list(SITES)
    dropped_at = [r["round"] for r in first if "hospital-c" in r["missing"]]
    assert dropped_at and all(set(r["contributed"]) == {"hospital-a", "hospital-b"} for r in first[1:])
    # the ledger says why: the round closed at its deadline before FLARE declared the client disconnected
    assert all(r["left_out"] == {"hospital-c": "timed out"} for r in first[1:])
    server_log = poc.job_file(chain[0], "log.txt").read_text()
    assert "no update from hospital-c" in server_log
    # the resumed job continues the round numbering and hospital-c is back from its first round on
    assert second[0]["round"] == first[-1]["round"] + 1 and second[-1]["round"] == 5
    assert all(r["contributed"] == list(SITES) for r in second)


def test_server_restart_mid_job_is_detected_and_training_resumes(poc, tmp_path):
    job_id = poc.submit(small_job(tmp_path, num_rounds=4, local_epochs=1), via="api")
    wait_for_completed_rounds(poc, job_id, 1)
    poc.kill(SERVER, keep_daemon=True)  # the server process crashes; its supervisor loop restarts it

    chain, meta = poc.follow(job_id, timeout=900, rejoin=False)
    assert len(chain) == 2 and meta["status"] == "FINISHED:COMPLETED", (chain, meta)
    first, resumed = (poc.participation(j)["rounds"] for j in chain)
    assert resumed[0]["round"] == len(first) and resumed[-1]["round"] == 3  # numbering continues, no round lost
    resume_log = poc.job_file(chain[1], "log.txt").read_text()
    assert "resume_from_global_model.pt" in resume_log  # started from the saved global model, not from scratch
    saved = torch.load(poc.job_file(chain[0], "app_server/FL_global_model.pt"), weights_only=True)
    (submitted,) = (poc.root / "submitted" / chain[1]).iterdir()
    assert not list(submitted.glob("*/custom")), "the resumed job must carry no code (it would be a BYOC job)"
    config = json.loads((submitted / "app_server/config/config_fed_server.json").read_text())
    (persistor,) = [c for c in config["components"] if c["id"] == "persistor"]
    loaded = torch.load(persistor["args"]["source_ckpt_file_full_name"], weights_only=True)
    assert all(torch.equal(saved["model"][k], loaded["model"][k]) for k in saved["model"])


def wait_for_round(poc, job_id, round_number, timeout=600):
    log = poc.kit(SERVER) / job_id / "log.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and f"Round {round_number} started." in log.read_text(errors="replace"):
            return
        time.sleep(1)
    raise AssertionError(f"round {round_number} of {job_id} never started")


def wait_for_completed_rounds(poc, job_id, n, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(poc.participation(job_id)["rounds"]) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"{job_id} did not complete {n} rounds")
