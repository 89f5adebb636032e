"""The site side of each federated algorithm and of DP-SGD, through one real executor on the real WDBC data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AlgorithmConstants, AppConstants

from oncofl import wdbc
from oncofl.algorithms import DPSettings, PrivacyLedger, local_state_keys, scheduled_lr
from oncofl.engine import DeviceData, Trainer
from oncofl.executor import ERROR_HEADER, OncoFLExecutor
from oncofl.site.hooks import DPSGD
from oncofl.site_config import ENV_VAR
from oncofl.tasks import get_task
from oncofl.tasks.breast_wdbc import WDBCNet, domain_standardization
from tests.integration.test_executor_round import fl_context

SPEC = get_task("breast_wdbc")


@pytest.fixture(scope="module")
def wdbc_data(tmp_path_factory):
    return wdbc.generate(tmp_path_factory.mktemp("wdbc"), seed=0)


def _executor(wdbc_data, tmp_path, monkeypatch, **kwargs) -> OncoFLExecutor:
    monkeypatch.setenv(ENV_VAR, str(wdbc_data / "site_configs"))
    kwargs = {"local_epochs": 2, **kwargs}
    executor = OncoFLExecutor(task="breast_wdbc", batch_size=16, learning_rate=3e-3, **kwargs)
    (tmp_path / "app").mkdir(parents=True, exist_ok=True)
    executor.bind_site("site-1", tmp_path / "ws", tmp_path / "app")
    return executor


def _task(weights: dict, round_number: int = 0, controls: dict | None = None):
    dxo = DXO(data_kind=DataKind.WEIGHTS, data=weights)
    if controls is not None:
        parts = {
            AppConstants.MODEL_WEIGHTS: dxo,
            AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL: DXO(DataKind.WEIGHT_DIFF, controls),
        }
        dxo = DXO(data_kind=DataKind.COLLECTION, data=parts)
    task = dxo.to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, round_number)
    return task


def _initial() -> dict:
    torch.manual_seed(0)
    return {k: v.numpy() for k, v in WDBCNet().state_dict().items()}


def _distance(a: dict, b: dict) -> float:
    return float(sum(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2) for k in a if k.startswith("net.")) ** 0.5)


def test_fedprox_keeps_the_local_model_closer_to_the_global_one(wdbc_data, tmp_path, monkeypatch):
    start = _initial()
    results = {}
    for name, kwargs in {"fedavg": {}, "fedprox": {"algorithm": "fedprox", "fedprox_mu": 5.0}}.items():
        executor = _executor(wdbc_data, tmp_path / name, monkeypatch, **kwargs)
        reply = executor.execute("train", _task(start), fl_context("site-1"), Signal())
        assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
        results[name] = from_shareable(reply).data
    assert _distance(results["fedprox"], start) < 0.8 * _distance(results["fedavg"], start)


def test_scaffold_sends_a_weight_difference_and_control_update_and_uses_the_global_controls(
    wdbc_data, tmp_path, monkeypatch
):
    start = _initial()
    params = {k: v for k, v in start.items() if k.startswith("net.")}
    executor = _executor(wdbc_data, tmp_path, monkeypatch, algorithm="scaffold")
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    reply = executor.execute("train", _task(start, controls=zero), fl_context("site-1"), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
    parts = from_shareable(reply).data
    diff, ctrl = parts[AppConstants.MODEL_WEIGHTS], parts[AlgorithmConstants.SCAFFOLD_CTRL_DIFF]
    assert diff.data_kind == ctrl.data_kind == DataKind.WEIGHT_DIFF
    assert set(ctrl.data) == set(params) and diff.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) > 0
    assert all(np.isfinite(v).all() for v in ctrl.data.values()) and any(
        np.abs(v).sum() > 0 for v in ctrl.data.values()
    )
    # with large global controls the local trajectory changes: the correction is applied at every step
    other = _executor(wdbc_data, tmp_path / "b", monkeypatch, algorithm="scaffold")
    big = {k: np.full_like(v, 0.5) for k, v in params.items()}
    moved = from_shareable(other.execute("train", _task(start, controls=big), fl_context("site-1"), Signal())).data
    assert _distance(moved[AppConstants.MODEL_WEIGHTS].data, diff.data) > 0  # compared as diffs from the same start
    # a SCAFFOLD executor with a plain FedAvg server says what is wrong
    reply = _executor(wdbc_data, tmp_path / "c", monkeypatch, algorithm="scaffold").execute(
        "train", _task(start), fl_context("site-1"), Signal()
    )
    assert "sent no control variates" in reply.get_header(ERROR_HEADER)


def test_fedbn_keeps_normalization_state_at_the_site_and_reports_personalized_metrics(wdbc_data, tmp_path, monkeypatch):
    executor = _executor(wdbc_data, tmp_path, monkeypatch, algorithm="fedbn", local_epochs=10)
    # without DP the training loss is streamed to the server's TensorBoard like the other scalars
    executor.execute("train", _task(_initial()), fl_context("site-1"), Signal())
    assert "train_loss" in executor.streamed[0]
    start = _initial()
    first = from_shareable(executor.execute("train", _task(start), fl_context("site-1"), Signal())).data
    local = {"input_mean", "input_sq_mean", "stats_ready"}
    assert local.isdisjoint(first) and set(first) == set(start) - local  # never sent
    own_mean = executor._local_weights["input_mean"].copy()
    assert float(executor._local_weights["stats_ready"]) == 1.0
    executor.execute("train", _task(start, round_number=1), fl_context("site-1"), Signal())  # global has zeros
    np.testing.assert_array_equal(executor._trainer.model.input_mean.numpy(), own_mean)  # not overwritten
    # the trained network with a standardization other than its own (here none: raw features), as cross-site
    # evaluation sends a model whose normalization state was never aggregated
    other = {"input_mean": np.zeros(30, np.float32), "input_sq_mean": np.ones(30, np.float32)}
    sent = {**executor._local_weights, **other, "stats_ready": np.ones((), np.float32)}
    metrics = from_shareable(executor.execute("validate", _task(sent), fl_context("site-1"), Signal())).data
    assert metrics["val_accuracy_personalized"] > metrics["val_accuracy"] + 0.1  # own standardization restored
    assert local_state_keys(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))) == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }


def test_dp_sgd_reports_epsilon_and_the_site_refuses_to_exceed_its_budget(wdbc_data, tmp_path, monkeypatch):
    dp = {"epsilon_budget": 2.0, "delta": 1e-5, "max_grad_norm": 1.0, "noise_multiplier": 3.0}  # ~0.9, 1.2, 1.5, ...
    executor = _executor(wdbc_data, tmp_path, monkeypatch, dp=dp)
    weights, spent = _initial(), []
    for round_number in range(20):
        reply = executor.execute("train", _task(weights, round_number), fl_context("site-1"), Signal())
        if reply.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            assert "privacy budget spent" in reply.get_header(ERROR_HEADER)
            break
        dxo = from_shareable(reply)
        spent.append(dxo.get_meta_prop("dp_epsilon"))
        assert dxo.get_meta_prop("dp_epsilon_next_round") > spent[-1]
        weights = dxo.data
    else:
        pytest.fail("the site never stopped at its privacy budget")
    assert 3 <= len(spent) < 20 and spent == sorted(spent) and spent[-1] <= 2.0
    # the training loss (a mean over DP-SGD's own batches, outside the accounting) stays in the local log and TB
    assert all("train_loss" not in tags and "dp_epsilon" in tags for tags in executor.streamed.values())
    local_tb = list((tmp_path / "app" / "tb_local").glob("events.out.tfevents.*"))
    assert local_tb and any(b"train_loss" in f.read_bytes() for f in local_tb)
    assert executor._trainer.privacy.epsilon(executor._trainer.privacy.steps_per_round) > 2.0
    with pytest.raises(ValueError, match="fedavg, fedopt or fedbn"):
        OncoFLExecutor(task="breast_wdbc", algorithm="fedprox", dp=dp)


def test_calibrated_noise_spends_the_budget_in_the_planned_rounds():
    settings = DPSettings.from_job({"epsilon_budget": 2.0, "planned_rounds": 10})
    ledger = PrivacyLedger(settings, n_samples=150, batch_size=16, epochs_per_round=5)
    for _ in range(9 * ledger.steps_per_round):
        ledger.step()
    assert ledger.next_round_fits() and ledger.epsilon() < 2.0
    for _ in range(ledger.steps_per_round):
        ledger.step()
    assert ledger.epsilon() == pytest.approx(2.0, abs=0.02) and not ledger.next_round_fits()
    with pytest.raises(ValueError, match="unknown"):
        DPSettings.from_job({"epsilon": 1.0})


def test_dp_training_clips_per_sample_gradients_and_still_learns(wdbc_data):
    from oncofl.data import load_split, read_datalist
    from oncofl.site_config import load_site_config

    config = load_site_config(wdbc_data / "site_configs" / "site-1.json", site_name="site-1")
    cases = read_datalist(config)
    train = load_split(cases["training"], SPEC, {}, config)
    data = DeviceData.from_numpy(train.images, train.labels, torch.device("cpu"))
    trainer = Trainer(SPEC, torch.device("cpu"), learning_rate=3e-2, seed=0)
    before = trainer.evaluate(data, batch_size=64)
    trainer.add_hook(
        DPSGD(DPSettings(noise_multiplier=0.8, max_grad_norm=5.0, epsilon_budget=100.0), len(data), 64, 30)
    )
    stats = trainer.train(data, epochs=30, batch_size=64)
    assert stats.steps > 0 and trainer.privacy.epsilon() > 0
    assert set(trainer.model.state_dict()) == set(WDBCNet().state_dict())  # names unchanged by Opacus
    # no statistic outside DP-SGD: the standardization is still the published feature domain's
    assert float(trainer.model.stats_ready) == 0.0
    torch.testing.assert_close(trainer.model.standardization()[0], domain_standardization()[0])
    # measured 0.991 on trainer seeds 0/1/2 (0.78-0.88 before the initial model carried the published feature
    # domain's standardization); before training 0.43-0.63
    assert trainer.evaluate(data, batch_size=64) > max(before + 0.15, 0.93)


def test_the_kept_local_model_is_a_copy_not_the_live_network(wdbc_data, tmp_path, monkeypatch):
    """submit_model after cross-site validate tasks must return the model trained here, not the last one scored."""
    executor = _executor(wdbc_data, tmp_path, monkeypatch)
    executor.execute("train", _task(_initial()), fl_context("site-1"), Signal())
    trained = {k: v.copy() for k, v in executor._local_weights.items()}
    other = {k: np.zeros_like(v) for k, v in trained.items()}
    executor.execute("validate", _task(other), fl_context("site-1"), Signal())
    submitted = from_shareable(executor.execute("submit_model", _task(other), fl_context("site-1"), Signal())).data
    assert all(np.array_equal(submitted[k], trained[k]) for k in trained)


def test_cosine_schedule_lowers_the_sites_learning_rate_over_the_rounds(wdbc_data, tmp_path, monkeypatch):
    start = _initial()
    moved, lrs = {}, {}
    for round_number in (0, 3):
        executor = _executor(wdbc_data, tmp_path / f"r{round_number}", monkeypatch, lr_schedule="cosine")
        task = _task(start, round_number)
        task.set_header(AppConstants.NUM_ROUNDS, 4)
        reply = executor.execute("train", task, fl_context("site-1"), Signal())
        assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
        moved[round_number] = _distance(from_shareable(reply).data, start)
        lrs[round_number] = executor._trainer.optimizer.param_groups[0]["lr"]
    assert lrs[0] == pytest.approx(3e-3) and lrs[3] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(0.75 * np.pi)))
    assert moved[3] < 0.5 * moved[0]  # the same start, a 0.15x learning rate: a much smaller step
    with pytest.raises(ValueError, match="learning-rate schedule"):
        _executor(wdbc_data, tmp_path / "bad", monkeypatch, lr_schedule="step")


def test_reset_optimizer_state_starts_each_round_with_fresh_adam_moments(wdbc_data, tmp_path, monkeypatch):
    """optimizer_state="reset": the second round's Adam counts only its own steps; "keep" carries the first's."""
    start = _initial()
    counts, moved = {}, {}
    for state in ("keep", "reset"):
        executor = _executor(wdbc_data, tmp_path / state, monkeypatch, optimizer_state=state)
        for round_number in (0, 1):
            reply = executor.execute("train", _task(start, round_number), fl_context("site-1"), Signal())
            assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
            steps = from_shareable(reply).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        adam = executor._trainer.optimizer.state
        counts[state] = {int(v["step"]) for v in adam.values()}
        moved[state] = _distance(from_shareable(reply).data, start)
    assert steps > 0
    assert counts["keep"] == {2 * steps} and counts["reset"] == {steps}
    assert moved["keep"] != pytest.approx(moved["reset"])  # the same start and data: the moments changed the step
    with pytest.raises(ValueError, match="optimizer_state"):
        _executor(wdbc_data, tmp_path / "bad", monkeypatch, optimizer_state="zero")


def test_scheduled_lr_values():
    assert scheduled_lr(0.1, "constant", 7, 10) == 0.1
    cosine = [scheduled_lr(0.1, "cosine", r, 4) for r in range(4)]
    assert cosine == pytest.approx([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2])
    assert scheduled_lr(0.1, "cosine", 0, 1) == 0.1  # one round: the base rate


def test_weight_decay_option_travels_with_the_job_and_shrinks_the_local_weights(wdbc_data, tmp_path, monkeypatch):
    """A site-side option added as settings field + job option + one hook: the exported job carries it, the site's
    optimizer applies it (decoupled, AdamW's), and the same round ends with smaller weights than without it."""
    from oncofl.jobs import definition
    from oncofl.simulate import executor_args

    job = definition("breast_wdbc").export(tmp_path / "jobs", weight_decay=0.5)
    args = executor_args(job)
    assert args["weight_decay"] == 0.5
    assert "weight_decay" not in executor_args(definition("breast_wdbc").export(tmp_path / "plain"))  # the default
    start = _initial()
    norms = {}
    for decay in (0.0, args["weight_decay"]):
        executor = _executor(wdbc_data, tmp_path / f"wd{decay}", monkeypatch, weight_decay=decay, local_epochs=10)
        reply = executor.execute("train", _task(start), fl_context("site-1"), Signal())
        assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
        groups = executor._trainer.optimizer.param_groups
        assert all(g["weight_decay"] == decay for g in groups)
        weights = from_shareable(reply).data
        norms[decay] = math.sqrt(sum(float(np.sum(np.square(v))) for k, v in weights.items() if k.startswith("net.")))
    assert all(g["decoupled_weight_decay"] for g in groups)
    # measured: the decayed weights' norm is 0.915x the plain run's after 10 local epochs at lr 3e-3 (seeded)
    assert norms[0.5] < 0.97 * norms[0.0]
    with pytest.raises(ValueError, match="weight_decay"):
        _executor(wdbc_data, tmp_path / "bad", monkeypatch, weight_decay=-1.0)
