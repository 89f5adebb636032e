import filecmp
import json
import subprocess
import sys

import pytest

from oncofl.catalog import JOBS as CATALOG
from tests.conftest import REPO

JOBS = [job.name for job in CATALOG]
JOB = REPO / "jobs" / "prostate_mri_seg"


def _diff(a, b, rel=""):
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    problems = [f"{rel}{n}: only in committed" for n in cmp.left_only]
    problems += [f"{rel}{n}: only in generated" for n in cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    problems += [f"{rel}{n}: differs" for n in mismatch + errors]
    for sub in cmp.common_dirs:
        problems += _diff(a / sub, b / sub, f"{rel}{sub}/")
    return problems


@pytest.mark.parametrize("name", JOBS)
def test_committed_job_folder_equals_generated(tmp_path, name):
    subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{name}.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    problems = _diff(REPO / "jobs" / name, tmp_path / name)
    assert not problems, f"regenerate with `python jobs/{name}.py`: " + "; ".join(problems)


@pytest.mark.parametrize("name", JOBS)
def test_job_holds_no_site_paths_and_streams_no_logs(name):
    for file in ("meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json"):
        text = (REPO / "jobs" / name / file).read_text()
        json.loads(text)
        assert "data_root" not in text and "/" + "home" not in text and "/tmp" not in text and str(REPO) not in text
        assert "LogStreamer" not in text  # site logs (which name local files) stay at the site


@pytest.mark.parametrize("name", JOBS)
def test_server_initial_model_is_the_same_in_every_run(name):
    # FLARE builds the server's "model" component from the job config; unseeded, every run started from other
    # weights and the learning assertions of the e2e tests swung with it
    import importlib

    import torch

    server = json.loads((REPO / "jobs" / name / "app/config/config_fed_server.json").read_text())
    (model,) = [c for c in server["components"] if c["id"] == "model"]
    module, _, cls = model["path"].rpartition(".")
    build = getattr(importlib.import_module(module), cls)
    torch.manual_seed(123)
    first = build(**model["args"]).state_dict()
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # building the network left the caller's random stream alone
    torch.manual_seed(7)
    second = build(**model["args"]).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = build(**model["args"], init_seed=1).state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_job_wires_the_documented_workflow():
    server = json.loads((JOB / "app/config/config_fed_server.json").read_text())
    client = json.loads((JOB / "app/config/config_fed_client.json").read_text())
    assert [w["path"].rsplit(".", 1)[1] for w in server["workflows"]] == ["ScatterAndGather", "CrossSiteModelEval"]
    components = {c["id"]: c for c in server["components"]}
    assert components["model_selector"]["args"]["key_metric"] == "val_dice"
    assert components["persistor"]["args"]["model"] == "model"
    assert components["model"]["path"] == "oncofl.tasks.prostate_seg.ProstateSegNet"
    assert components["aggregator"]["path"] == "oncofl.aggregation.RobustAggregator"
    assert components["aggregator"]["args"] == {"method": "mean", "reject_norm_factor": 10.0}
    executor = client["executors"][0]
    assert set(executor["tasks"]) == {"train", "validate", "submit_model"}
    assert executor["executor"]["args"]["task"] == "prostate_seg"


@pytest.mark.parametrize("name", JOBS)
def test_job_folder_holds_settings_only_and_names_the_oncofl_it_was_built_for(name):
    """No code travels with a job: its components come from the oncofl installed at each site and the server, and
    both sides check at the job's start that it is the version and code the job was built for."""
    from oncofl.provenance import installed

    folder = REPO / "jobs" / name
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["app/config/config_fed_client.json", "app/config/config_fed_server.json", "meta.json"]
    for side in ("client", "server"):
        config = json.loads((folder / f"app/config/config_fed_{side}.json").read_text())
        (check,) = [c for c in config["components"] if c["id"] == "oncofl_provenance"]
        assert check["path"] == "oncofl.provenance.ProvenanceCheck" and check["args"] == installed()


def test_ship_code_is_explicit_and_ships_only_the_jobs_own_task(tmp_path):
    """Research mode (--ship-code): the package travels in app/custom, without demo-data writers and other tasks."""
    from oncofl.jobs import breast_wdbc

    job = breast_wdbc.export(tmp_path, ship_code=True)
    shipped = job / "app/custom/oncofl"
    assert (shipped / "privacy.py").is_file() and (shipped / "executor.py").is_file()
    tasks = sorted(p.name for p in (shipped / "tasks").glob("*.py") if not p.name.startswith("_"))
    assert tasks == ["breast_wdbc.py"]
    assert not list(shipped.glob("synthetic*.py")) and not (shipped / "wdbc.py").exists()
    assert not (breast_wdbc.export(tmp_path / "plain") / "app/custom").exists()


@pytest.mark.parametrize(
    ("options", "workflow", "generator", "aggregator"),
    [
        ({}, "ScatterAndGather", "FullModelShareableGenerator", "RobustAggregator"),
        ({"algorithm": "fedprox"}, "ScatterAndGather", "FullModelShareableGenerator", "RobustAggregator"),
        ({"algorithm": "fedopt"}, "ScatterAndGather", "PTFedOptModelShareableGenerator", "RobustAggregator"),
        (
            {"algorithm": "scaffold"},
            "ScatterAndGatherScaffold",
            "FullModelShareableGenerator",
            "InTimeAccumulateWeightedAggregator",
        ),
        ({"algorithm": "fedbn"}, "ScatterAndGather", "FullModelShareableGenerator", "RobustAggregator"),
        ({"dp_epsilon": 2.0}, "PrivacyBudgetScatterAndGather", "FullModelShareableGenerator", "RobustAggregator"),
        ({"he": True}, "ScatterAndGather", "HEModelShareableGenerator", "HEInTimeAccumulateWeightedAggregator"),
    ],
)
def test_each_algorithm_option_wires_its_components(tmp_path, options, workflow, generator, aggregator):
    from oncofl.jobs import breast_wdbc

    job = breast_wdbc.export(tmp_path, num_rounds=7, **options)
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    components = {c["id"]: c for c in server["components"]}
    assert server["workflows"][0]["path"].rsplit(".", 1)[1] == workflow
    assert components["shareable_generator"]["path"].rsplit(".", 1)[1] == generator
    assert components["aggregator"]["path"].rsplit(".", 1)[1] == aggregator
    args = client["executors"][0]["executor"]["args"]
    assert args["algorithm"] == options.get("algorithm", "fedavg")
    # provisioned sites' privacy scope: HE jobs name the one whose guard does not bound norms it cannot measure
    assert json.loads((job / "meta.json").read_text()).get("scope") == ("oncofl-he" if options.get("he") else None)
    if "dp_epsilon" in options:
        assert args["dp"]["epsilon_budget"] == 2.0 and args["dp"]["planned_rounds"] == 7
        assert server["workflows"][0]["args"]["epsilon_budget"] == 2.0
    # the PHI gate is filed under every task the executor answers, by name (FLARE has no task wildcard)
    gated = {
        t
        for chain in client["task_result_filters"]
        if any(f["path"] == "oncofl.privacy.PHIGuardFilter" for f in chain["filters"])
        for t in chain["tasks"]
    }
    assert gated == set(client["executors"][0]["tasks"]) == {"train", "validate", "submit_model"}


def test_a_filter_chain_that_would_never_run_is_refused(tmp_path):
    """FLARE 2.9 looks a job's filters up by the exact task name: a "*" chain, or a task without the PHI gate, means
    results leave a site unfiltered. Export refuses both."""
    from oncofl.jobs.builder import _check_client_filters

    config = json.loads((JOB / "app/config/config_fed_client.json").read_text())
    _check_client_filters(config)  # the committed job passes
    wildcard = {**config, "task_result_filters": [{**config["task_result_filters"][0], "tasks": ["*"]}]}
    with pytest.raises(RuntimeError, match="no task wildcard"):
        _check_client_filters(wildcard)
    partial = {**config, "task_result_filters": [{**config["task_result_filters"][0], "tasks": ["train"]}]}
    with pytest.raises(RuntimeError, match=r"\['submit_model', 'validate'\].*without PHIGuardFilter"):
        _check_client_filters(partial)


def test_unknown_algorithm_and_options_are_refused(tmp_path):
    from oncofl.jobs import breast_wdbc

    with pytest.raises(ValueError, match="unknown algorithm"):
        breast_wdbc.export(tmp_path, algorithm="fedsgd")
    with pytest.raises(ValueError, match="unknown job option"):
        breast_wdbc.export(tmp_path, fedprox_nu=1.0)
    with pytest.raises(ValueError, match="privacy filter"):
        breast_wdbc.export(tmp_path, privacy_filter="laplace")
    with pytest.raises(ValueError, match="learning-rate schedule"):
        breast_wdbc.export(tmp_path, lr_schedule="linear")
    job = breast_wdbc.export(tmp_path, lr_schedule="cosine")
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["lr_schedule"] == "cosine"
    with pytest.raises(ValueError, match="server optimizer"):
        breast_wdbc.export(tmp_path, algorithm="fedopt", server_optimizer="rmsprop")
    with pytest.raises(ValueError, match="optimizer_state"):
        breast_wdbc.export(tmp_path, optimizer_state="zero")
    job = breast_wdbc.export(tmp_path, optimizer_state="reset")
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["optimizer_state"] == "reset"


@pytest.mark.parametrize(
    ("options", "path", "args"),
    [
        ({}, "torch.optim.Adam", {"lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-3}),
        (
            {"server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.5},
            "torch.optim.SGD",
            {"lr": 1.0, "momentum": 0.5},
        ),
    ],
)
def test_fedopt_server_optimizer_adam_or_fedavgm(tmp_path, options, path, args):
    from oncofl.jobs import breast_wdbc

    job = breast_wdbc.export(tmp_path, algorithm="fedopt", **options)
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    (generator,) = [c for c in server["components"] if c["id"] == "shareable_generator"]
    optimizer = generator["args"]["optimizer_args"]
    assert optimizer["path"] == path and optimizer["args"] == args


def test_init_seed_option_seeds_the_server_model_and_the_sites_network_alike(tmp_path):
    from oncofl.jobs import breast_mammo_cls

    job = breast_mammo_cls.export(tmp_path, small_network=True, init_seed=3)
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    (model,) = [c for c in server["components"] if c["id"] == "model"]
    network = client["executors"][0]["executor"]["args"]["network"]
    assert model["args"]["init_seed"] == network["init_seed"] == 3
    assert {k: v for k, v in network.items() if k != "init_seed"}  # the small network's own settings are kept


def test_fedbn_is_refused_where_it_would_be_fedavg(tmp_path):
    """prostate_seg's UNet (InstanceNorm, no affine parameters) keeps no normalization state: FedBN = FedAvg."""
    from oncofl.jobs import breast_wdbc, prostate_mri_seg

    with pytest.raises(ValueError, match="FedAvg under another name"):
        prostate_mri_seg.export(tmp_path, algorithm="fedbn")
    assert breast_wdbc.export(tmp_path, algorithm="fedbn").is_dir()  # BatchNorm: state to keep


def test_gpus_per_site_reserves_gpus_through_the_sites_resource_managers(tmp_path):
    from oncofl.jobs import prostate_mri_seg

    meta = json.loads((prostate_mri_seg.export(tmp_path / "gpu", gpus_per_site=1) / "meta.json").read_text())
    assert meta["resource_spec"] == {"@default": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}}
    # the committed jobs reserve nothing: they also run on CPU-only rehearsal sites
    assert not json.loads((JOB / "meta.json").read_text()).get("resource_spec")


def test_rounds_wait_for_every_live_site_unless_a_deadline_is_set(tmp_path):
    from oncofl.jobs import breast_wdbc
    from oncofl.jobs.builder import WAIT_FOR_EVERY_SITE

    def workflow_args(**options):
        job = breast_wdbc.export(tmp_path / str(len(options)), **options)
        return json.loads((job / "app/config/config_fed_server.json").read_text())["workflows"][0]["args"]

    default = workflow_args()
    assert default["wait_time_after_min_received"] == WAIT_FOR_EVERY_SITE and not default.get("train_timeout")
    deadline = workflow_args(round_deadline=300)
    assert deadline["wait_time_after_min_received"] == 300 and deadline["train_timeout"] == 300
    with pytest.raises(ValueError, match="round_deadline"):
        workflow_args(round_deadline=-1)


@pytest.mark.parametrize(
    "options, flag",
    [
        ({"he": True, "max_update_norm": 5.0}, "--max-update-norm"),
        ({"he": True, "reject_norm_factor": 20.0}, "--reject-norm-factor"),
        ({"algorithm": "scaffold", "aggregation": "median"}, "--aggregation"),
        ({"algorithm": "scaffold", "max_update_norm": 5.0}, "--max-update-norm"),
        ({"algorithm": "scaffold", "reject_norm_factor": 0.0}, "--reject-norm-factor"),
        ({"algorithm": "scaffold", "trim_fraction": 0.1}, "--trim-fraction"),
    ],
)
def test_robust_aggregation_options_a_server_would_ignore_are_refused_at_export(tmp_path, options, flag):
    from oncofl.jobs import breast_wdbc

    with pytest.raises(ValueError, match=f"{flag}.*would have no effect"):
        breast_wdbc.export(tmp_path, **options)


def test_jobs_select_the_best_model_over_the_aggregated_sites_only():
    server = json.loads((JOB / "app/config/config_fed_server.json").read_text())
    selector = {c["id"]: c for c in server["components"]}["model_selector"]
    assert selector["path"] == "oncofl.server.AggregatedModelSelector"
    assert selector["args"] == {"key_metric": "val_dice"}
