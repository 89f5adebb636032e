"""Multi-device sites on the CPU: two real gloo ranks (this process + one spawned helper) with DistributedDataParallel
train exactly like one process with twice the batch; abort reaches every rank; the helper is gone after close."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oncofl.distributed import SiteGroup, site_devices
from oncofl.engine import DeviceData, Trainer
from oncofl.site.settings import TrainSettings
from oncofl.tasks import get_task

TASK = "breast_wdbc"  # an MLP with a per-sample mean loss and no augmentation: the equivalence is exact


def data(n=64, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64)
    return x, y


def initial_weights():
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in get_task(TASK).build_network().state_dict().items()}


def test_site_devices_from_the_site_config():
    assert site_devices((), 1) == [] and site_devices((0,), 4) == []
    assert site_devices((), 2) == ([torch.device("cpu")] * 2 if not torch.cuda.is_available() else [])
    assert site_devices((0, 1)) == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_two_gloo_ranks_train_like_one_process_with_double_batch(tmp_path):
    x, y = data()
    cpu = torch.device("cpu")
    single = Trainer(get_task(TASK), cpu, learning_rate=1e-2, seed=7)
    single.load_state(initial_weights())
    single_stats = single.train(DeviceData.from_numpy(x, y, cpu), epochs=3, batch_size=16)

    settings = TrainSettings(task=TASK, learning_rate=1e-2, seed=7)
    group = SiteGroup([cpu, cpu], settings=settings, images=x, labels=y, workdir=tmp_path)
    try:
        rank0 = Trainer(get_task(TASK), cpu, learning_rate=1e-2, seed=7)
        rank0.load_state(initial_weights())
        train = DeviceData.from_numpy(x, y, cpu)
        stats = group.train(rank0, train, epochs=3, batch_size=8, should_abort=lambda: False)
        # FedAvg weights sites by steps at the job's batch size: 2 ranks x 4 steps/epoch = one process with batch 8
        assert stats.steps == 2 * single_stats.steps == 3 * 64 // 8
        assert stats.mean_loss == pytest.approx(single_stats.mean_loss, rel=1e-5)
        ddp, ref = rank0.state(), single.state()
        assert any(not np.array_equal(ddp[k], initial_weights()[k]) for k in ddp)  # it trained
        for k in ref:
            np.testing.assert_allclose(ddp[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)

        # the next round starts from new global weights on every rank (broadcast), and an abort stops all ranks
        rank0.load_state(initial_weights())
        calls = iter(range(100))
        aborted = group.train(rank0, train, epochs=3, batch_size=8, should_abort=lambda: next(calls) >= 2)
        assert aborted.aborted and aborted.steps == 2 * 2
        stats = group.train(rank0, train, epochs=1, batch_size=8, should_abort=lambda: False)
        assert not stats.aborted and stats.steps == 64 // 8
    finally:
        helpers = list(group.procs)
        group.close()
    assert all(not p.is_alive() for p in helpers)
    assert not torch.distributed.is_initialized()
    assert not list(tmp_path.glob("ddp_*")), "the group leaves no files behind"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL)")
def test_one_nccl_rank_on_a_gpu_trains_like_one_process(tmp_path):
    """The NCCL path on one card: a process group of one rank, so DDP's gradient all-reduce, the broadcast of the
    global weights and of the abort flag, and the all-reduce of the loss all run through NCCL; the result is one
    process's."""
    x, y = data()
    gpu = torch.device("cuda", 0)
    single = Trainer(get_task(TASK), gpu, learning_rate=1e-2, seed=7)
    single.load_state(initial_weights())
    single_stats = single.train(DeviceData.from_numpy(x, y, gpu), epochs=3, batch_size=8)

    settings = TrainSettings(task=TASK, learning_rate=1e-2, seed=7)
    group = SiteGroup([gpu], settings=settings, images=x, labels=y, workdir=tmp_path)
    try:
        assert group.world == 1 and group.backend == "nccl" and not group.procs
        assert torch.distributed.get_backend() == "nccl"
        rank0 = Trainer(get_task(TASK), gpu, learning_rate=1e-2, seed=7)
        rank0.load_state(initial_weights())
        train = DeviceData.from_numpy(x, y, gpu)
        stats = group.train(rank0, train, epochs=3, batch_size=8, should_abort=lambda: False)
        assert rank0._ddp is not None, "the round did not run through DistributedDataParallel"
        assert stats.steps == single_stats.steps == 3 * 64 // 8
        assert stats.mean_loss == pytest.approx(single_stats.mean_loss, rel=1e-4)
        ddp, ref = rank0.state(), single.state()
        assert any(not np.array_equal(ddp[k], initial_weights()[k]) for k in ddp)
        for k in ref:
            np.testing.assert_allclose(ddp[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
        calls = iter(range(100))
        aborted = group.train(rank0, train, epochs=3, batch_size=8, should_abort=lambda: next(calls) >= 2)
        assert aborted.aborted and aborted.steps == 2
    finally:
        group.close()
    assert not torch.distributed.is_initialized()
    assert not list(tmp_path.glob("ddp_*"))
