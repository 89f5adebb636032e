"""The real FLARE simulator running the committed job folder on 3 synthetic hospitals (slow: minutes on 2 CPUs)."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from oncofl import cli
from oncofl.dicom.seg import read_seg
from oncofl.dicom.series import read_series
from oncofl.evaluation import holdout_metric
from oncofl.jobs import breast_mammo_cls
from oncofl.jobs.prostate_mri_seg import export
from oncofl.simulate import run_simulator
from oncofl.tasks._classification import auc
from tests.conftest import REPO

SITES = ["site-1", "site-2", "site-3"]
pytestmark = pytest.mark.slow

# Measured on the 2-core CI machine (5 rounds x 6 local epochs, docs/benchmarks.md): held-out Dice of the initial
# model 0.02-0.04; of the final global model 0.87-0.91 over repeated runs. Thresholds keep a wide margin.
MAX_INITIAL_DICE = 0.15
MIN_FINAL_DICE = 0.70
MIN_GAIN = 0.50
# the held-out Dice of `oncofl predict`'s DICOM-SEGs on the source grids vs the job's held-out Dice on the network grid:
# they differ by the trip back through the inverse of the preprocessing (the oracle test in tests/unit/test_predict.py:
# up to 0.057 per case where the source grid is finer than the target spacing)
SEG_DICE_TOLERANCE = 0.03
MIN_WDBC_ACCURACY = 0.95  # measured 0.991 on seed 0 (112/113); 0.95 allows 5 errors
# measured final lung (8 rounds): 0.938-0.955 (docs/benchmarks.md); the mammography CPU variant: MIN_MAMMO_AUC
MIN_IMAGING_AUC = 0.70
MIN_MAMMO_AUC = 0.90  # the mammography CPU variant's last global model: measured 0.99-1.00 (see the test)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def identifiers(data_root):
    """Every patient name/ID and the data paths: none may reach the server."""
    found = {str(data_root)}
    for f in data_root.glob("site-*/cases/case_*/dicom/IM_0000.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        found |= {str(ds.PatientName), str(ds.PatientID)}
    return found


def unguarded_results(site_log):
    """Task ids a site ran (FLARE's own log lines) without a record of ``PHIGuardFilter`` passing their result."""
    text = site_log.read_text()
    ran = set(re.findall(r"ClientRunner - INFO - \[[^\]]*task_id=([0-9a-f-]+)", text))
    guarded = set(re.findall(r"PHIGuardFilter - INFO - \[[^\]]*task_id=([0-9a-f-]+)[^\n]*PHI guard passed", text))
    assert ran, f"no task found in {site_log}"
    return ran - guarded


def server_side_text(job_dir):
    """What the server holds: its logs, the cross-site results and the TensorBoard events streamed to it."""
    files = [job_dir.parent / "log.txt", job_dir.parent / "log.json", job_dir / "cross_site_val/cross_val_results.json"]
    files += [p for p in (job_dir / "tb_events").rglob("*") if p.is_file()]
    return b"\n".join(p.read_bytes() for p in files if p.is_file())


def test_three_sites_learn_and_produce_global_best_and_cross_site_results(synthetic_data, tmp_path):
    result = run_simulator(
        REPO / "jobs" / "prostate_mri_seg",
        tmp_path / "ws",
        synthetic_data / "site_configs",
        SITES,
        timeout=1500,
        log_file=tmp_path / "simulator.log",
    )
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]
    assert result.global_model.is_file() and result.best_model.is_file()

    cross = json.loads(result.cross_site.read_text())
    assert sorted(cross) == SITES
    for site in SITES:  # every site scored the global, the best global and every site's local model
        assert set(cross[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
        assert all(0.0 <= v["val_dice"] <= 1.0 for v in cross[site].values())
    for site in SITES:
        assert any((result.tb_events / site).iterdir()), f"no TensorBoard events from {site} on the server"
        # the PHI gate ran on every result the site sent (train, validate, submit_model), by its own record
        assert not unguarded_results(tmp_path / "ws" / site / "log.txt"), site

    holdout = synthetic_data / "holdout"
    initial = holdout_metric(None, holdout)
    final = holdout_metric(result.global_model, holdout)
    best = holdout_metric(result.best_model, holdout)
    print(
        f"held-out Dice: initial {initial:.3f}, final global {final:.3f}, best global {best:.3f}, "
        f"{result.seconds:.0f} s"
    )
    assert initial <= MAX_INITIAL_DICE
    assert final >= MIN_FINAL_DICE and final - initial >= MIN_GAIN
    assert best >= MIN_FINAL_DICE - 0.1

    wire = server_side_text(result.job_dir)
    leaked = [s for s in identifiers(synthetic_data) if s.encode() in wire]
    assert not leaked, f"server-side files contain patient identifiers or site paths: {leaked}"

    # the clinic's side: the run's global model on the held-out series (`oncofl predict --job <run>`), each DICOM-SEG
    # read back onto its series and scored against the ground truth on the source grid
    out = tmp_path / "predicted"
    assert cli.main(["predict", "--job", str(result.job_dir), "--input", str(holdout / "datalist.json"),
                     "--out", str(out)]) == 0  # fmt: skip
    scores = []
    for entry in json.loads((holdout / "datalist.json").read_text())["testing"]:
        series = holdout / entry["image"]
        truth = np.asarray(nib.load(holdout / entry["label"]).dataobj)
        scores.append(dice(read_seg(out / entry["image"] / "seg.dcm", read_series(series)), truth))
    print(f"held-out Dice of the DICOM-SEGs on the source grids: {np.mean(scores):.3f} (network grid {final:.3f})")
    assert abs(float(np.mean(scores)) - final) <= SEG_DICE_TOLERANCE


def test_site_with_unreadable_dicom_is_reported_and_others_finish(synthetic_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data, ignore=shutil.ignore_patterns("cache", "holdout"))
    victim = sorted((data / "site-3" / "cases" / "case_0004" / "dicom").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-header, as an interrupted copy leaves it
    job = export(tmp_path / "jobs", num_rounds=2, local_epochs=2)

    result = run_simulator(
        job, tmp_path / "ws", data / "site_configs", SITES, timeout=1200, log_file=tmp_path / "simulator.log"
    )
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]
    assert result.global_model.is_file()
    rounds = json.loads((result.job_dir / "participation.json").read_text())["rounds"]
    assert [r["contributed"] for r in rounds] == [["site-1", "site-2"]] * 2
    assert [r["left_out"] for r in rounds] == [{"site-3": "failed"}] * 2  # the ledger says why
    cross = json.loads(result.cross_site.read_text())
    assert {"site-1", "site-2"} <= set(cross)
    assert all("SRV_FL_global_model.pt" in cross[s] for s in ("site-1", "site-2"))

    server_log = result.server_log.read_text()
    reports = [line for line in server_log.splitlines() if "site-3 failed task 'train'" in line]
    assert reports, "the failing site's reason did not reach the server log"
    assert "[site-3] 1 case(s) could not be used; first: training case #" in reports[0]
    assert "the file is truncated" in reports[0] and "Fix: re-export the complete series" in reports[0]
    assert str(data) not in server_log and victim.name not in server_log
    leaked = [s for s in identifiers(data) if s.encode() in server_side_text(result.job_dir)]
    assert not leaked


def test_breast_wdbc_federated_learns_on_real_data(tmp_path):
    """Real data (scikit-learn's WDBC), 3 non-IID sites, 10 rounds: accuracy on the held-out 20 %."""
    from oncofl import wdbc

    data = wdbc.generate(tmp_path / "data", seed=0)
    # site-2 is a multi-device site: 2 DDP ranks (gloo, CPU) inside its FLARE client, set in its site config only
    site2 = data / "site_configs" / "site-2.json"
    site2.write_text(json.dumps({**json.loads(site2.read_text()), "cpu_processes": 2}))
    result = run_simulator(
        REPO / "jobs" / "breast_wdbc",
        tmp_path / "ws",
        data / "site_configs",
        SITES,
        timeout=900,
        log_file=tmp_path / "simulator.log",
    )
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]
    initial = holdout_metric(None, data / "holdout", task="breast_wdbc")
    final = holdout_metric(result.global_model, data / "holdout", task="breast_wdbc")
    print(f"breast_wdbc held-out accuracy: initial {initial:.3f}, final global {final:.3f}, {result.seconds:.0f} s")
    # measured: 0.991 (seed 0); the 3-seed table is in docs/benchmarks.md
    assert final >= MIN_WDBC_ACCURACY and final - initial >= 0.3
    cross = json.loads(result.cross_site.read_text())
    assert sorted(cross) == SITES and all("SRV_FL_global_model.pt" in cross[s] for s in SITES)
    log = (tmp_path / "simulator.log").read_text()
    assert "training with DistributedDataParallel on 2 x cpu" in log
    # the job's provenance check ran on the server and at every site, and found the code the job was built for
    for side in ("server", *SITES):
        assert "installed here, as the job expects" in (tmp_path / "ws" / side / "log.txt").read_text(), side


@pytest.mark.parametrize(
    "task, job_kwargs",
    [
        # every site in every round: with the job's default (2 sites + 5 s) an idle CI machine's fast sites close
        # rounds without the largest one, and AUC varied 0.69-0.95 between runs
        ("breast_mammo_cls", {**breast_mammo_cls.CPU_VARIANT, "min_clients": 3}),
    ],
)
def test_imaging_classification_jobs_learn(tmp_path, task, job_kwargs):
    """Synthetic MG / CT DICOM at 3 sites; the CPU variant of each job; AUC on the held-out cases of every vendor."""
    from oncofl.catalog import by_task

    data = by_task(task).write_demo_data(tmp_path / "data", seed=0)
    job = by_task(task).definition().export(tmp_path / "jobs", **job_kwargs)
    result = run_simulator(
        job, tmp_path / "ws", data / "site_configs", SITES, timeout=1200, log_file=tmp_path / "simulator.log"
    )
    assert result.returncode == 0, (tmp_path / "simulator.log").read_text()[-4000:]
    args = json.loads((job / "app/config/config_fed_client.json").read_text())["executors"][0]["executor"]["args"]
    settings = {"task": task, "network": args.get("network"), "params": args.get("preprocess")}
    initial = holdout_metric(None, data / "holdout", **settings)
    final = holdout_metric(result.global_model, data / "holdout", **settings)
    best = holdout_metric(result.best_model, data / "holdout", **settings)
    print(f"{task} held-out AUC: initial {initial:.3f}, final {final:.3f}, best {best:.3f}, {result.seconds:.0f} s")
    # The CPU variant (12 rounds x 6 local epochs, cosine learning rate) has converged by round ~8 on every data draw
    # measured; its last global model scored 1.000, 0.996, 1.000 held-out AUC over the evidence report's 3 seeds
    # (docs/evidence/breast_mammo_cls); at 8 x 3 with a constant rate it ended anywhere in 0.55-0.96.
    assert final >= MIN_MAMMO_AUC and final - initial >= 0.3
    assert best >= MIN_IMAGING_AUC
    assert "SiteErrorReporter" not in result.server_log.read_text()  # no site failed a task

    # the clinic's side: `oncofl predict --job <run>` on the held-out datalist gives the probabilities the job's own
    # evaluation scored (the same preprocessing), so their AUC is the held-out AUC of the final model
    out = tmp_path / "predicted"
    assert cli.main(["predict", "--job", str(result.job_dir), "--input", str(data / "holdout" / "datalist.json"),
                     "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads((out / "predictions.json").read_text())["predictions"]
    labels = [e["label"] for e in json.loads((data / "holdout" / "datalist.json").read_text())["testing"]]
    probabilities = torch.tensor([r["probability_malignant"] for r in rows])
    logits = torch.stack([torch.zeros_like(probabilities), torch.logit(probabilities.double()).float()], dim=1)
    assert auc(logits, torch.tensor(labels)) == pytest.approx(final, abs=1e-3)
    assert len(list((out / "sr").glob("case-*.dcm"))) == len(labels)
    cross = json.loads(result.cross_site.read_text())
    assert sorted(cross) == SITES and all(
        set(cross[s]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES} for s in SITES
    )


def with_site_guard(job):
    """Apply a hospital kit's default privacy scope (``site_templates/privacy.json``: SiteUpdateGuard in,
    SiteUpdateGuard and PHIGuardFilter out) to the job's clients, before the job's own filters, as a provisioned
    site runs them (the simulator loads no privacy.json)."""
    from oncofl.deploy import site as site_module

    templates = Path(site_module.__file__).parent / "site_templates"
    scope = json.loads((templates / "privacy.json").read_text())["scopes"][0]
    config_file = job / "app/config/config_fed_client.json"
    config = json.loads(config_file.read_text())
    for key in ("task_data_filters", "task_result_filters"):
        site_filters = [{"path": f["path"], "args": f["args"]} for f in scope[key]]
        chains = config.setdefault(key, [])
        for chain in chains:
            chain["filters"] = site_filters + chain["filters"]
        covered = {t for chain in chains for t in chain["tasks"]}
        rest = sorted({"train", "validate", "submit_model"} - covered)
        if rest:
            chains.append({"tasks": rest, "filters": site_filters})
    config_file.write_text(json.dumps(config, indent=1))


def test_lung_job_learns_as_well_under_the_hospital_privacy_guard(tmp_path):
    """The lung job (3D ResNet) with and without the guard a hospital kit applies, side by side. The guard keeps data
    statistics (BatchNorm running mean/var) at the site; with BatchNorm the global model kept its initial statistics
    (held-out AUC 0.961 -> 0.909), so the task networks use GroupNorm: the guard then has nothing to drop."""
    from concurrent.futures import ThreadPoolExecutor

    from oncofl import synthetic_lung
    from oncofl.jobs import lung_nodule_cls

    data = synthetic_lung.generate(tmp_path / "data", seed=0)

    def run(name):
        job = lung_nodule_cls.export(tmp_path / name / "jobs", min_clients=3)
        if name == "guarded":
            with_site_guard(job)
        ws, log = tmp_path / name / "ws", tmp_path / name / "simulator.log"
        result = run_simulator(job, ws, data / "site_configs", SITES, timeout=1500, log_file=log)
        assert result.returncode == 0, log.read_text()[-4000:]
        return result

    with ThreadPoolExecutor(2) as pool:
        plain, guarded = pool.map(run, ["plain", "guarded"])
    settings = {"task": "lung_nodule_cls", "network": None, "params": None}
    initial = holdout_metric(None, data / "holdout", **settings)
    scores = {}
    for name, result in (("plain", plain), ("guarded", guarded)):
        final = holdout_metric(result.global_model, data / "holdout", **settings)
        best = holdout_metric(result.best_model, data / "holdout", **settings)
        scores[name] = (final, best)
        print(f"lung {name}: held-out AUC initial {initial:.3f}, final {final:.3f}, best {best:.3f}")
        assert final - initial >= 0.2
        assert max(final, best) >= MIN_IMAGING_AUC and max(final, best) - initial >= 0.3
        assert "SiteErrorReporter" not in result.server_log.read_text()
    for site in SITES:  # the guard ran on every update and kept nothing back
        log = (tmp_path / "guarded/ws" / site / "log.txt").read_text()
        assert log.count("site privacy policy: excluded 0 of 41 tensors") >= 8, site
    # measured (2 CPUs): final 0.93-0.96 either way; with BatchNorm the guarded final fell 0.05
    assert scores["guarded"][0] >= scores["plain"][0] - 0.05


def test_a_job_built_for_other_oncofl_code_is_refused_at_its_start(tmp_path):
    """A job names the oncofl it was built for; the server and every site compare it with the oncofl installed there
    when the job starts and refuse it -- one line naming both versions and the fix -- before any data is read."""
    from oncofl import wdbc
    from oncofl.jobs import breast_wdbc
    from oncofl.provenance import installed

    data = wdbc.generate(tmp_path / "data", seed=0)
    job = breast_wdbc.export(tmp_path / "jobs", num_rounds=2)
    for side in ("client", "server"):
        path = job / f"app/config/config_fed_{side}.json"
        config = json.loads(path.read_text())
        (check,) = [c for c in config["components"] if c["id"] == "oncofl_provenance"]
        check["args"]["version"] = "0.1.9"  # built with an older release than the one installed
        path.write_text(json.dumps(config))
    result = run_simulator(job, tmp_path / "ws", data / "site_configs", SITES, timeout=600, log_file=tmp_path / "s.log")
    assert result.returncode != 0
    here = installed()
    code = here["code_sha256"][:12]
    for who, log in [("simulator_server", result.server_log), *((s, tmp_path / "ws" / s / "log.txt") for s in SITES)]:
        text = log.read_text()
        assert (
            f"refused: the job was built for oncofl 0.1.9 (code {code}) but {who} has oncofl {here['version']} "
            f"(code {code}) installed. Fix: install the consortium's oncofl 0.1.9 wheel" in text
        ), who
        assert "data ready" not in text and "round 0:" not in text  # nothing read, nothing trained
    assert not result.global_model.exists()


def test_a_slow_site_contributes_to_every_round_unless_the_job_sets_a_deadline(tmp_path):
    """site-3 answers every round 60 s late (a drill: its results are held back). By default every round
    waits for it; with a 40 s round deadline it is left out of every round, and the ledger says it timed out."""
    from concurrent.futures import ThreadPoolExecutor

    from oncofl import wdbc
    from oncofl.jobs import breast_wdbc

    data = wdbc.generate(tmp_path / "data", seed=0)
    slow = {"sites": ["site-3"], "delay_s": 60.0}

    def run(name, options):
        job = breast_wdbc.export(tmp_path / name / "jobs", num_rounds=2, fault=slow, **options)
        log = tmp_path / name / "simulator.log"
        result = run_simulator(job, tmp_path / name / "ws", data / "site_configs", SITES, timeout=1200, log_file=log)
        assert result.returncode == 0, log.read_text()[-4000:]
        return json.loads((result.job_dir / "participation.json").read_text()), result

    with ThreadPoolExecutor(2) as pool:
        waited, deadline = pool.map(run, ["default", "deadline"], [{}, {"round_deadline": 40}])
    assert [r["contributed"] for r in waited[0]["rounds"]] == [SITES, SITES], waited[0]
    assert not waited[0]["dropped"]
    for record in deadline[0]["rounds"]:
        assert "site-3" not in record["contributed"] and record["left_out"]["site-3"] == "timed out", record
    assert deadline[0]["dropped"] == ["site-3"]
    assert "no update from site-3 (timed out)" in deadline[1].server_log.read_text()
    weights = torch.load(deadline[1].global_model, map_location="cpu", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
