"""A prostate site whose datalist names NIfTI images (no DICOM left) trains and validates through the real executor,
with the same splits as its DICOM twin."""

import math

import numpy as np
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.signal import Signal

from oncofl.executor import ERROR_HEADER, OncoFLExecutor
from oncofl.site.runtime import load_splits
from oncofl.site_config import ENV_VAR, load_site_config
from oncofl.tasks import get_task
from tests.conftest import make_site, nifti_site
from tests.integration.test_executor_round import fl_context, global_model_task

TASK = get_task("prostate_seg")


def test_a_nifti_site_loads_the_same_splits_as_its_dicom_twin(tmp_path):
    params = TASK.params(None)
    dicom = load_site_config(make_site(tmp_path / "dicom", n_cases=3), site_name="site-1")
    nifti = load_site_config(nifti_site(tmp_path / "nifti", n_cases=3), site_name="site-1")
    assert all(str(c).endswith(".nii.gz") for c in nifti.data_root.glob("cases/*/image.nii.gz"))
    assert not list(nifti.data_root.glob("cases/*/dicom"))
    from_dicom, from_nifti = load_splits(dicom, TASK, params), load_splits(nifti, TASK, params)
    for split in ("training", "validation"):
        assert np.allclose(from_nifti[split].images, from_dicom[split].images, atol=1e-5)
        assert np.array_equal(from_nifti[split].labels, from_dicom[split].labels)


def test_a_nifti_site_trains_one_round_through_the_executor(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(nifti_site(tmp_path, n_cases=4)))  # 3 training cases, 1 validation case
    executor = OncoFLExecutor(local_epochs=2, batch_size=2)
    executor.bind_site("site-1", tmp_path / "workspace", tmp_path / "app")
    (tmp_path / "app").mkdir()
    task, sent = global_model_task()
    result = executor.execute("train", task, fl_context("site-1"), Signal())
    assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK, result.get_header(ERROR_HEADER)
    dxo = from_shareable(result)
    assert dxo.data_kind == DataKind.WEIGHTS and all(np.isfinite(v).all() for v in dxo.data.values())
    assert any(not np.array_equal(dxo.data[k], sent[k]) for k in sent)  # it trained
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 2 * math.ceil(3 / 2)
    assert 0.0 <= dxo.get_meta_prop(MetaKey.INITIAL_METRICS)["val_dice"] <= 1.0
    metrics = from_shareable(executor.execute("validate", global_model_task()[0], fl_context("site-1"), Signal()))
    assert metrics.data_kind == DataKind.METRICS and 0.0 <= metrics.data["val_dice"] <= 1.0
