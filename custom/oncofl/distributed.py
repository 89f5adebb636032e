"""Multi-GPU sites: a site's local training with DistributedDataParallel on every device its site config lists.

The executor's own process is rank 0 (it talks to FLARE, loads the global weights, evaluates, replies); ranks 1..N-1
are helper processes started once per job and kept for every round, each holding the training split on its own
device, so later rounds skip process start-up and data loading. Every round all ranks start from rank 0's weights
(broadcast), walk one shared shuffled order (rank r takes positions r, r+N, ...) and average gradients through DDP:
N ranks with batch B train like one process with batch N x B. NCCL on GPUs, gloo on CPUs (``cpu_processes`` in the
site config: CPU-only sites and tests). A group of one device is allowed (no helpers; DDP and its NCCL collectives
over one rank): the GPU checks run the NCCL path that way on a machine with one card.
"""

from __future__ import annotations

import os
import tempfile
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .engine import DeviceData, RoundInfo, RoundStats, Trainer
from .site.settings import TrainSettings

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank (a whole local round can be long)


def site_devices(gpu_ids: tuple[int, ...], cpu_processes: int = 1) -> list[torch.device]:
    """The devices a site trains on: every configured GPU, else ``cpu_processes`` CPU ranks."""
    if len(gpu_ids) > 1:
        return [torch.device("cuda", i) for i in gpu_ids]
    if not gpu_ids and cpu_processes > 1 and not torch.cuda.is_available():
        return [torch.device("cpu")] * cpu_processes
    return []  # one device: no process group


@dataclass(frozen=True)
class _HelperSpec:
    """What a helper rank is started with (pickled to the spawned process)."""

    rank: int
    world: int
    backend: str
    init_file: str
    device: str
    settings: TrainSettings
    data_paths: tuple[str, str]


class SiteGroup:
    """The helper ranks of one site and the process group that joins them to the executor's process.

    Args:
        devices: one per rank; rank 0 (this process) trains on ``devices[0]``.
        settings: the job's training settings (every rank builds the same trainer and hooks from them).
        images: the training split, handed to the helper ranks once (through ``workdir``).
        labels: its labels.
        workdir: local folder for the group's rendezvous and data files (removed files at ``close``).
    """

    def __init__(
        self,
        devices: list[torch.device],
        *,
        settings: TrainSettings,
        images: np.ndarray,
        labels: np.ndarray,
        workdir: Path | None = None,
    ) -> None:
        if not devices:
            raise ValueError("a site group needs at least one device")
        if dist.is_initialized():
            raise RuntimeError("this process already belongs to a torch.distributed group (one DDP site per process)")
        self.world = len(devices)
        self.backend = "nccl" if devices[0].type == "cuda" else "gloo"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="oncofl_ddp_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        init_file = self.workdir / f"ddp_init_{tag}"
        data_paths = (self.workdir / f"ddp_images_{tag}.npy", self.workdir / f"ddp_labels_{tag}.npy")
        np.save(data_paths[0], images)
        np.save(data_paths[1], labels)
        self._files = [init_file, *data_paths]
        ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawned children get this process's sys.path
        self.conns, self.procs = [], []
        for rank in range(1, self.world):
            spec = _HelperSpec(
                rank, self.world, self.backend, str(init_file), str(devices[rank]), settings,
                (str(data_paths[0]), str(data_paths[1])),
            )  # fmt: skip
            parent, child = ctx.Pipe()
            # daemon: ends with the job process, whatever happens to it
            proc = ctx.Process(target=_helper_main, args=(spec, child), daemon=True, name=f"oncofl-ddp-rank{rank}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        if devices[0].type == "cuda":
            torch.cuda.set_device(devices[0])
        dist.init_process_group(
            self.backend, init_method=f"file://{init_file}", rank=0, world_size=self.world, timeout=TIMEOUT
        )

    def train(
        self,
        trainer: Trainer,
        data: DeviceData,
        *,
        epochs: int,
        batch_size: int,
        should_abort: Callable[[], bool],
        info: RoundInfo | None = None,
        learning_rate: float | None = None,
    ) -> RoundStats:
        """One local round on every rank; returns rank 0's stats (steps counted as single-process steps)."""
        for conn in self.conns:
            conn.send(("train", epochs, batch_size, info, learning_rate))
        try:
            stats = trainer.train(
                data,
                epochs=epochs,
                batch_size=batch_size,
                should_abort=should_abort,
                info=info,
                learning_rate=learning_rate,
            )
        finally:
            replies = [self._reply(rank, conn) for rank, conn in enumerate(self.conns, start=1)]
        errors = [r for r in replies if r[0] == "error"]
        if errors:
            raise RuntimeError(f"DDP helper rank failed: {errors[0][1]}")
        return stats

    def _reply(self, rank: int, conn) -> tuple[str, Any]:
        proc = self.procs[rank - 1]
        while not conn.poll(5):
            if not proc.is_alive():
                return ("error", f"rank {rank} exited with code {proc.exitcode}")
        return conn.recv()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        if dist.is_initialized():
            dist.destroy_process_group()
        for path in self._files:
            Path(path).unlink(missing_ok=True)


def _helper_main(spec: _HelperSpec, conn) -> None:
    """A helper rank: joins the group, keeps the training split on its device, trains when rank 0 does."""
    from .site.hooks import site_hooks
    from .tasks import get_task

    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world))
    dist.init_process_group(
        spec.backend, init_method=f"file://{spec.init_file}", rank=spec.rank, world_size=spec.world, timeout=TIMEOUT
    )
    try:
        data = DeviceData.from_numpy(np.load(spec.data_paths[0]), np.load(spec.data_paths[1]), device)
        settings, task = spec.settings, get_task(spec.settings.task)
        hooks = site_hooks(settings, task.local_state, len(data))
        trainer = Trainer(
            task,
            device,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
            network=settings.network,
            hooks=hooks,
        )
        while (command := conn.recv())[0] != "stop":
            _, epochs, batch_size, info, learning_rate = command
            try:
                stats = trainer.train(
                    data, epochs=epochs, batch_size=batch_size, info=info, learning_rate=learning_rate
                )
                conn.send(("done", stats.steps))
            except Exception:
                conn.send(("error", f"rank {spec.rank}: {traceback.format_exc(limit=3)}"))
    except EOFError:  # rank 0 went away
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
