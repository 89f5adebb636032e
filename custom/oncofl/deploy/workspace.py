"""A FLARE workspace on this machine: where the kits lie, the environment FLARE and the kits run in, and who is who.

The bottom of every deployment this package runs (the POC and a provisioned consortium rehearsed here): nothing in it
starts a process except :meth:`Workspace.run_nvflare`, the ``nvflare`` command of this environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


class PocError(RuntimeError):
    """A deployment step failed (POC or provisioned consortium); the message says which and what to do. (The name is
    older than the provisioned consortium; both raise it.)"""


@dataclass
class Workspace:
    """The folders of one deployment under ``root``, the environment its FLARE commands and kits run in, and the
    names of its participants. Constructing one touches nothing on disk.

    Args:
        root: the folder everything lives under: ``nvflare/`` (FLARE's workspace with the kits), ``data/``,
            ``results/`` and the deployment's own records. Made absolute.
        port: the server's port (FL and admin) on this machine.
        env_overrides: environment variables set for every FLARE command and kit (tests give each its own HOME).
    """

    root: Path
    port: int
    env_overrides: dict[str, str] = field(default_factory=dict)

    # who is who: a POC names them in its class, a provisioned consortium reads them from its project.yml
    project_name: ClassVar[str]
    server_name: ClassVar[str]
    site_names: ClassVar[tuple[str, ...]]
    project_admin: ClassVar[str]  # asks for status, waits for jobs, downloads results
    lead: ClassVar[str]  # submits jobs unless told otherwise

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def participants(self) -> list[str]:
        """The server and every hospital (no admins): what runs as a FLARE process."""
        return [self.server_name, *self.site_names]

    @property
    def flare_ws(self) -> Path:
        return self.root / "nvflare"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def prod(self) -> Path:
        return self.flare_ws / self.project_name / "prod_00"

    def kit(self, name: str) -> Path:
        """A participant's (or an admin's) startup kit folder."""
        return self.prod / name

    def data_of(self, site: str) -> Path:
        """The data folder a hospital's kit is configured with."""
        return Path(json.loads((self.kit(site) / "local" / "oncofl_site.json").read_text())["data_root"])

    @property
    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "NVFLARE_POC_WORKSPACE": str(self.flare_ws), **self.env_overrides}
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the kits' scripts call `python3`
        return env  # no PYTHONPATH to the repo: jobs must bring their code (app/custom), as at a real site

    def nvflare_command(self, *args: str) -> list[str]:
        """The command line of this environment's ``nvflare`` with ``args``."""
        return [str(Path(sys.executable).parent / "nvflare"), *args]

    def run_nvflare(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``nvflare args`` in :attr:`env` and wait for it; ``check``: raise :class:`PocError` when it fails."""
        proc = subprocess.run(  # umask 077: what FLARE writes (keys, the root CA's state, kits) is owner-only
            self.nvflare_command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            umask=0o077,
        )
        if check and proc.returncode != 0:
            raise PocError(f"`nvflare {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc
