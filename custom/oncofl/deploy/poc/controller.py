"""The POC controller: :class:`Poc` prepares the kits with ``nvflare poc prepare``, starts them all with ``nvflare poc
start`` and asks them to stop with ``nvflare poc stop``; everything else (process records, admin, jobs) is what every
deployment does (:class:`~oncofl.deploy.deployment.Deployment`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..deployment import Deployment
from ..workspace import PocError
from .layout import (
    DEFAULT_PORT,
    DEFAULT_ROOT,
    GITIGNORE,
    LEAD,
    PROJECT,
    PROJECT_ADMIN,
    SERVER,
    SITES,
    project_text,
    site_config,
    write_site_local,
)


@dataclass
class Poc(Deployment):
    """One POC installation under ``root``. Safe to construct any time; nothing runs until a method is called.

    Args:
        root: where the POC lives: ``nvflare/`` (the POC workspace, ``NVFLARE_POC_WORKSPACE``), ``data/``,
            ``results/`` and the record of the processes it started. Default ``poc/workspace``.
        port: the server's port; a POC of its own port never collides with another. Default 8102.
        env_overrides: environment variables for every FLARE command and kit (tests give each its own HOME).
        he: provision kits with CKKS contexts (FLARE's HEBuilder) for homomorphic-encryption jobs.
    """

    root: Path = DEFAULT_ROOT
    port: int = DEFAULT_PORT
    env_overrides: dict[str, str] = field(default_factory=dict)
    he: bool = False

    # who is who in the POC
    project_name = PROJECT
    server_name = SERVER
    site_names = SITES
    project_admin = PROJECT_ADMIN
    lead = LEAD

    # ---------------------------------------------------------------- prepare
    def prepare(self, gpus: dict[str, list[int]] | None = None, data: Path | None = None) -> None:
        """Provision the POC kits, make synthetic data if absent, give every hospital its data (and GPU) config."""
        if self.running_pids():
            raise PocError(f"a POC is running under {self.root}; run `oncofl poc stop` first")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".gitignore").write_text(GITIGNORE)
        project = self.root / "project.yml"
        project.write_text(project_text(self.port, self.he))
        self.run_nvflare("poc", "prepare", "-i", str(project), "--force")
        data = Path(data).resolve() if data else self.data
        if not (data / "site_configs").is_dir():
            from ... import synthetic

            synthetic.generate(data, seed=0)
        self.configure_server()
        for site in self.site_names:
            self.configure_site(site, data, (gpus or {}).get(site, []))

    def configure_site(self, site: str, data: Path, gpu_ids: list[int]) -> None:
        """What a hospital's IT does once: the data config and the GPUs the client may hand out to jobs."""
        write_site_local(self.kit(site) / "local", site_config(site, data, gpu_ids), self.he)

    # ---------------------------------------------------------------- start / stop
    def start(self, only: list[str] | None = None, timeout: float = 90) -> None:
        """Start the server and the hospitals (or ``only`` those), then wait until every client has connected."""
        args = ["poc", "start", "--timeout", str(int(timeout))]
        for name in only or []:
            args += ["-p", name]
        not_before = time.time() - 2  # create times are rounded down to the boot second; the session proves the rest
        launcher = subprocess.Popen(
            self.nvflare_command(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:  # everything `nvflare poc start` launches inherits its session id, i.e. its PID
            out, _ = launcher.communicate(timeout=timeout + 60)
            if launcher.returncode != 0:
                raise PocError(f"`nvflare {' '.join(args)}` failed ({launcher.returncode}):\n{out}")
            if only is None or self.server_name in only:
                self.wait_for_clients(
                    list(self.site_names) if only is None else [s for s in only if s in self.site_names], timeout
                )
        finally:  # a start that failed half way still gets what it started recorded, so `stop` can end it
            self.record_started(launcher.pid, not_before, list(only or self.participants()))

    def request_shutdown(self, timeout: float) -> None:
        """Ask FLARE to shut every participant down (``nvflare poc stop``); ``stop`` then waits for the PIDs."""
        try:
            self.run_nvflare("poc", "stop", timeout=timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            pass

    def clean(self) -> None:
        """Remove the whole POC root (kits, keys, data, results); refused while the POC runs."""
        if self.running_pids():
            raise PocError("the POC is still running; run `oncofl poc stop` first")
        shutil.rmtree(self.root, ignore_errors=True)
