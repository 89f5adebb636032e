"""A site's GPUs under FLARE's resource management: the GPUs the site names, not the first N of the host.

FLARE 2.9's ``GPUResourceManager`` offers the host's first ``num_of_gpus`` GPUs (of those in the client's
``CUDA_VISIBLE_DEVICES``) and its consumer sets the job process's ``CUDA_VISIBLE_DEVICES`` to the ones it allocated.
A hospital whose site config says ``"gpu_ids": [1, 2]`` (GPU 0 belongs to another service) was then given GPU 0, and
its device check failed. Here:

* :class:`SiteGPUResourceManager` offers exactly the site's ``gpu_ids`` (nvidia-smi indices; ``oncofl site
  configure`` writes them into the kit's ``local/resources.json``), so a job that asks for GPUs
  (``resource_spec``, e.g. ``oncofl job export ... --gpus-per-site 1``) is queued until one of *them* is free;
* :class:`SiteGPUConsumer` hands the allocated ones to the job process and names them in :data:`ENV_ALLOCATED`;
* :func:`job_gpu_ids` turns the site config's ``gpu_ids`` into the job process's device indices: the allocated GPUs
  when FLARE allocated some (each must be one the site configured), else the configured ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from nvflare.app_common.resource_managers.gpu_resource_manager import GPUResource, GPUResourceManager

from .errors import SiteConfigError

ENV_ALLOCATED = "ONCOFL_ALLOCATED_GPUS"


class SiteGPUResourceManager(GPUResourceManager):
    """FLARE's GPU resource manager over the site's own ``gpu_ids`` (nvidia-smi indices).

    Args:
        gpu_ids: the GPUs offered to jobs: distinct nvidia-smi indices, e.g. ``[1, 2]``; ``[]``: none.
        mem_per_gpu_in_GiB: the memory (GiB) each of them offers: a job asking for more per GPU in its
            ``resource_spec`` waits (FLARE's bookkeeping; not checked against the card).
        expiration_period: seconds a reservation is held when the job it was made for does not take it (FLARE's
            ``expiration_period``; a whole number above 0, default 30).
        ignore_host: True: do not check that every ``gpu_ids`` entry is a GPU of this host (nvidia-smi).
    """

    def __init__(
        self,
        gpu_ids: list[int],
        mem_per_gpu_in_GiB: float,
        expiration_period: float = 30,
        ignore_host: bool = False,
    ) -> None:
        ids = list(gpu_ids)
        if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"gpu_ids must be distinct GPU indices such as [1, 2], got {gpu_ids!r}")
        super().__init__(
            num_of_gpus=0, mem_per_gpu_in_GiB=mem_per_gpu_in_GiB, expiration_period=expiration_period, ignore_host=True
        )
        if ids and not ignore_host:
            from nvflare.fuel.utils.gpu_utils import get_host_gpu_ids

            missing = sorted(set(ids) - set(get_host_gpu_ids()))
            if missing:
                raise ValueError(f"GPU(s) {missing} of gpu_ids {ids} are not on this host (nvidia-smi)")
        self.gpu_ids = ids
        self.resources = {g: GPUResource(gpu_id=g, gpu_memory=mem_per_gpu_in_GiB) for g in ids}


class SiteGPUConsumer:
    """Gives the job process the GPUs FLARE allocated to it (nvidia-smi order) and names them for the executor."""

    def __init__(self) -> None:
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"

    def consume(self, resources: dict) -> None:
        ids = ",".join(str(int(g)) for g in resources)
        os.environ["CUDA_VISIBLE_DEVICES"] = ids
        os.environ[ENV_ALLOCATED] = ids


def job_gpu_ids(configured: tuple[int, ...], env: Mapping[str, str] | None = None, site: str = "") -> tuple[int, ...]:
    """The device indices this job process trains on. Without an allocation: the site config's ``gpu_ids`` as they
    are. With one (:data:`ENV_ALLOCATED`, set by :class:`SiteGPUConsumer`): every allocated GPU, as the job process
    sees them (``cuda:0`` ...), provided each is one the site configured."""
    env = os.environ if env is None else env
    raw = env.get(ENV_ALLOCATED, "").strip()
    if not raw:
        return tuple(configured)
    try:
        allocated = [int(g) for g in raw.split(",")]
    except ValueError:
        raise SiteConfigError(
            "the GPUs allocated to this job could not be read",
            fix="configure the kit's resource manager with `oncofl site configure` (the kit's local resources.json)",
            site=site,
        ) from None
    foreign = [g for g in allocated if configured and g not in configured]
    if foreign:
        raise SiteConfigError(
            "FLARE allocated GPU(s) to this job that the site config's gpu_ids do not name",
            fix="configure the kit's resource manager with the site's gpu_ids (`oncofl site configure`)",
            site=site,
            detail=f"allocated {allocated}, configured {list(configured)}",
        )
    return tuple(range(len(allocated)))
