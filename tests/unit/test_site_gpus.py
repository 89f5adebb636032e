"""A site's GPUs under FLARE's resource manager: the GPUs the site names are the ones offered, allocated and used."""

import pytest
from nvflare.apis.fl_context import FLContext

from oncofl.errors import SiteConfigError
from oncofl.site_gpus import ENV_ALLOCATED, SiteGPUConsumer, SiteGPUResourceManager, job_gpu_ids


def test_the_manager_offers_the_sites_gpus_not_the_first_of_the_host():
    """FLARE's own manager offers GPUs 0..N-1: a site configured for GPUs 1 and 2 was given GPU 0."""
    manager = SiteGPUResourceManager(gpu_ids=[1, 2], mem_per_gpu_in_GiB=8, ignore_host=True)
    ctx = FLContext()
    ok, token = manager.check_resources({"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}, ctx)
    assert ok
    allocated = manager.allocate_resources({"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}, token, ctx)
    assert list(allocated) == [1]
    ok, token2 = manager.check_resources({"num_of_gpus": 2, "mem_per_gpu_in_GiB": 8}, ctx)
    assert not ok  # GPU 1 is taken, GPU 0 is not the site's: the job waits in the queue
    manager.free_resources(allocated, token, ctx)
    ok, _ = manager.check_resources({"num_of_gpus": 2, "mem_per_gpu_in_GiB": 8}, ctx)
    assert ok
    with pytest.raises(ValueError, match="distinct GPU indices"):
        SiteGPUResourceManager(gpu_ids=[1, 1], mem_per_gpu_in_GiB=8, ignore_host=True)


def test_a_cpu_site_offers_no_gpu():
    manager = SiteGPUResourceManager(gpu_ids=[], mem_per_gpu_in_GiB=0)  # no host check needed for no GPUs
    ok, _ = manager.check_resources({"num_of_gpus": 1, "mem_per_gpu_in_GiB": 1}, FLContext())
    assert not ok


def test_the_consumer_hands_the_allocation_to_the_job_process(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", ENV_ALLOCATED, "CUDA_DEVICE_ORDER"):  # restored after the test
        monkeypatch.setenv(name, "unset")
    SiteGPUConsumer().consume({2: 8})
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and os.environ[ENV_ALLOCATED] == "2"


def test_the_job_trains_on_the_allocated_gpus_as_the_job_process_sees_them():
    assert job_gpu_ids((1, 2), env={}) == (1, 2)  # no allocation: the site config as it is
    assert job_gpu_ids((1, 2), env={ENV_ALLOCATED: "2"}) == (0,)  # GPU 2 is cuda:0 in the job process
    assert job_gpu_ids((1, 2), env={ENV_ALLOCATED: "1,2"}) == (0, 1)
    with pytest.raises(SiteConfigError, match="do not name") as refused:
        job_gpu_ids((1, 2), env={ENV_ALLOCATED: "0"}, site="site-1")
    assert "allocated [0]" not in refused.value.server_message()  # numbers stay in the local log's detail
