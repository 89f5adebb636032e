"""One real executor, real FLARE Shareables/DXOs/Signals, real DICOM on disk: train, validate, submit_model, errors."""

import json
import math

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import numpy_decomposers
from nvflare.fuel.utils import fobs

from oncofl.executor import ERROR_HEADER, OncoFLExecutor
from oncofl.site_config import ENV_VAR
from oncofl.tasks.prostate_seg import ProstateSegNet
from tests.conftest import make_site

DP = {"epsilon_budget": 8.0, "noise_multiplier": 1.0}


def fl_context(site: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    return ctx


def global_model_task(round_number: int = 0):
    weights = {k: v.numpy() for k, v in ProstateSegNet().state_dict().items()}
    task = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, round_number)
    return task, weights


@pytest.fixture
def site(tmp_path, monkeypatch):
    config = make_site(tmp_path, n_cases=4)  # 3 training cases, 1 validation case
    monkeypatch.setenv(ENV_VAR, str(config))
    executor = OncoFLExecutor(local_epochs=2, batch_size=2)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    (tmp_path / "app").mkdir()
    return executor, tmp_path


def phi_strings(root):
    import pydicom

    ds = pydicom.dcmread(next((root / "site-1" / "cases").glob("case_*/dicom/IM_0000.dcm")))
    return [str(ds.PatientName), str(ds.PatientID), str(root)]


def test_train_returns_finite_weights_step_count_and_global_metric(site):
    executor, root = site
    task, sent = global_model_task()
    result = executor.execute("train", task, fl_context("site-1"), Signal())
    assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK
    dxo = from_shareable(result)
    assert dxo.data_kind == DataKind.WEIGHTS and set(dxo.data) == set(sent)
    assert all(np.isfinite(v).all() for v in dxo.data.values())
    assert any(not np.array_equal(dxo.data[k], sent[k]) for k in sent)  # it trained
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 2 * math.ceil(3 / 2)
    initial = dxo.get_meta_prop(MetaKey.INITIAL_METRICS)
    assert set(initial) == {"val_dice"} and 0.0 <= initial["val_dice"] <= 1.0
    assert (root / "app" / "local_model.pt").is_file() and any((root / "app" / "tb_local").iterdir())
    # nothing identifying (patient name/ID) and no local path in what is sent to the server
    numpy_decomposers.register()
    wire = fobs.dumps(result)
    for secret in phi_strings(root):
        assert secret.encode() not in wire

    # the data stays in memory between rounds: with the DICOM files gone, round 1 still trains
    for entry in (root / "site-1" / "cases").glob("case_*/dicom/*.dcm"):
        entry.unlink()
    task2, _ = global_model_task(round_number=1)
    assert from_shareable(executor.execute("train", task2, fl_context("site-1"), Signal())).data_kind == "WEIGHTS"


def test_validate_and_submit_model(site):
    executor, _ = site
    ctx = fl_context("site-1")
    assert executor.execute("submit_model", global_model_task()[0], ctx, Signal()).get_return_code() == (
        ReturnCode.EMPTY_RESULT
    )
    trained = from_shareable(executor.execute("train", global_model_task()[0], ctx, Signal())).data
    task, _ = global_model_task()
    task.set_header(AppConstants.MODEL_OWNER, "site-2")
    metrics = from_shareable(executor.execute("validate", task, ctx, Signal()))
    assert metrics.data_kind == DataKind.METRICS and 0.0 <= metrics.data["val_dice"] <= 1.0
    submitted = from_shareable(executor.execute("submit_model", global_model_task()[0], ctx, Signal())).data
    assert all(np.array_equal(submitted[k], trained[k]) for k in trained)


def test_abort_signal_stops_training(site):
    executor, _ = site
    signal = Signal()
    signal.trigger("test abort")
    result = executor.execute("train", global_model_task()[0], fl_context("site-1"), signal)
    assert result.get_return_code() == ReturnCode.TASK_ABORTED


def test_wrong_model_is_refused_with_a_message(site):
    executor, _ = site
    task = DXO(data_kind=DataKind.WEIGHTS, data={"fc.weight": np.zeros((2, 2))}).to_shareable()
    result = executor.execute("train", task, fl_context("site-1"), Signal())
    assert result.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "does not match the 'prostate_seg' network" in result.get_header(ERROR_HEADER)
    assert "fc.weight" not in result.get_header(ERROR_HEADER)  # the names stay in the local log


def test_missing_data_root_is_an_error_reply_naming_site_and_fix_without_paths(tmp_path, monkeypatch):
    config_path = make_site(tmp_path)
    config = json.loads(config_path.read_text())
    config["data_root"] = str(tmp_path / "moved_away")
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv(ENV_VAR, str(config_path))
    executor = OncoFLExecutor()
    executor.bind_site("site-1", tmp_path / "workspace")
    result = executor.execute("train", global_model_task()[0], fl_context("site-1"), Signal())
    assert result.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    message = result.get_header(ERROR_HEADER)
    assert message.startswith("[site-1] invalid site configuration: 'data_root' folder does not exist")
    assert "Fix: edit the site configuration file" in message
    assert str(tmp_path) not in message and "moved_away" not in message
    # fixed while the job runs: the next task succeeds
    config["data_root"] = str(tmp_path / "site-1")
    config_path.write_text(json.dumps(config))
    assert (
        executor.execute("train", global_model_task()[0], fl_context("site-1"), Signal()).get_return_code(ReturnCode.OK)
        == ReturnCode.OK
    )


def test_site_config_cpu_processes_trains_with_ddp_and_cleans_up(tmp_path, monkeypatch):
    """A multi-device site (here 2 gloo ranks on the CPU, as CI has no GPUs): the same reply as a one-device site,
    steps counted at the job's batch size, and the helper rank ends with the job."""
    config = make_site(tmp_path, n_cases=4, cpu_processes=2)
    monkeypatch.setenv(ENV_VAR, str(config))
    executor = OncoFLExecutor(local_epochs=2, batch_size=2)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    (tmp_path / "app").mkdir()
    task, sent = global_model_task()
    try:
        result = executor.execute("train", task, fl_context("site-1"), Signal())
        assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK, result.get_header(ERROR_HEADER)
        assert executor._group is not None and executor._group.world == 2
        helpers = list(executor._group.procs)
        assert all(p.is_alive() for p in helpers)  # kept between rounds
        dxo = from_shareable(result)
        assert all(np.isfinite(v).all() for v in dxo.data.values())
        assert any(not np.array_equal(dxo.data[k], sent[k]) for k in sent)
        # 3 training cases: 2 ranks x 1 batch of 2 per epoch (padded) = 2 single-process steps per epoch, 2 epochs
        assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 4
        second = executor.execute("train", global_model_task(1)[0], fl_context("site-1"), Signal())
        assert second.get_return_code(ReturnCode.OK) == ReturnCode.OK
    finally:
        executor.close()
    assert all(not p.is_alive() for p in helpers)
    assert not list((tmp_path / "app" / "ddp").glob("*.npy")), "the training split copy for the ranks is removed"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL)")
def test_a_gpu_site_trains_through_nccl_ddp(tmp_path, monkeypatch):
    """The executor's multi-GPU path with NCCL, on a machine with one card: the site's device list is made one GPU
    long (a real site lists several), so the executor builds its DDP group of one NCCL rank and trains through it."""
    import oncofl.executor

    config = make_site(tmp_path, n_cases=4, gpu_ids=[0])
    monkeypatch.setenv(ENV_VAR, str(config))
    monkeypatch.setattr(oncofl.executor, "site_devices", lambda gpu_ids, cpu_processes=1: [torch.device("cuda", 0)])
    executor = OncoFLExecutor(local_epochs=2, batch_size=2)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    (tmp_path / "app").mkdir()
    task, sent = global_model_task()
    try:
        result = executor.execute("train", task, fl_context("site-1"), Signal())
        assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK, result.get_header(ERROR_HEADER)
        assert executor._group is not None and executor._group.backend == "nccl"
        assert torch.distributed.get_backend() == "nccl" and executor._trainer._ddp is not None
        dxo = from_shareable(result)
        assert all(np.isfinite(v).all() for v in dxo.data.values())
        assert any(not np.array_equal(dxo.data[k], sent[k]) for k in sent)
        assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 2 * math.ceil(3 / 2)
    finally:
        executor.close()
    assert not torch.distributed.is_initialized()


def _executor_for(config_path, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(config_path))
    executor = OncoFLExecutor(local_epochs=1, batch_size=2)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    (tmp_path / "app").mkdir(exist_ok=True)
    return executor


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_hostile_site_replies_without_any_marker(tmp_path, monkeypatch, policy):
    """Markers in every header, name and exception path; one case per failure kind. With ``skip`` the site trains
    on its good cases; with ``fail`` its reply lists every bad case by position and type. No marker in the reply."""
    from tests.phi_markers import FAILURES, MARKER, SITE_FIELDS, hostile_site

    root = tmp_path / f"{MARKER} root, North"
    config_path = make_site(root, n_cases=7, on_unreadable_case=policy, **SITE_FIELDS)
    items = hostile_site(root / "site-1")
    result = _executor_for(config_path, monkeypatch, tmp_path).execute(
        "train", global_model_task()[0], fl_context("site-1"), Signal()
    )
    numpy_decomposers.register()
    serialized = fobs.dumps(result)  # what FLARE sends: every header and the DXO
    assert MARKER.encode() not in serialized
    if policy == "skip":
        assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK, result.get_header(ERROR_HEADER)
    else:
        message = result.get_header(ERROR_HEADER)
        assert message.startswith(f"[site-1] {len(FAILURES)} case(s) could not be used; first: training case #")
        assert all(f"{items[k]}, image:" in message for k in FAILURES)


def test_an_unexpected_exception_is_named_by_its_type_only(tmp_path, monkeypatch):
    """An OSError the code does not anticipate (a datalist entry whose name is too long for the file system) carries
    the path in its message; the reply names the exception's type, the path stays in the local log."""
    config_path = make_site(tmp_path)
    datalist = tmp_path / "site-1" / "datalist.json"
    cases = json.loads(datalist.read_text())
    cases["training"][0]["image"] = "cases/DOE, ZQXPHI" + "x" * 300
    datalist.write_text(json.dumps(cases))
    result = _executor_for(config_path, monkeypatch, tmp_path).execute(
        "train", global_model_task()[0], fl_context("site-1"), Signal()
    )
    message = result.get_header(ERROR_HEADER)
    assert message == "[site-1] task 'train' failed with OSError. Fix: see this site's local log for the full traceback"


@pytest.mark.parametrize(("options", "name"), [({"algorithm": "scaffold"}, "SCAFFOLD"), ({"dp": DP}, "DP-SGD")])
def test_a_one_device_algorithm_on_a_multi_device_site_is_refused_with_the_fix(tmp_path, monkeypatch, options, name):
    """SCAFFOLD and DP-SGD train on one device per site: a site configured for several says so before training, and
    starts no helper rank."""
    config = make_site(tmp_path, n_cases=4, cpu_processes=2)
    monkeypatch.setenv(ENV_VAR, str(config))
    executor = OncoFLExecutor(local_epochs=1, batch_size=2, **options)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    try:
        reply = executor.execute("train", global_model_task()[0], fl_context("site-1"), Signal())
        message = reply.get_header(ERROR_HEADER)
        assert f"this job uses {name}, which trains on one device per site" in message
        assert '"cpu_processes": 1' in message and executor._group is None
    finally:
        executor.close()
