"""What every deployment run from this machine shares, whoever issued its kits: the POC (:mod:`.poc`) and a
provisioned consortium rehearsed here (:mod:`.provision`).

:class:`Deployment` is a :class:`~.workspace.Workspace` (folders, environment, who is who) that holds three helpers
and offers their operations under one name:

* ``processes`` (:class:`~.processes.KitProcesses`): start a participant from its kit, list, kill and stop only the
  processes it started;
* ``admin`` (:class:`~.admin.FlareAdmin`): admin sessions, the admin console, connected clients;
* ``jobs`` (:class:`~.job_control.JobControl`): stage, submit, wait, follow, resume and download jobs.

A kind of deployment adds how its kits are made and started (``start``) and how FLARE is asked to shut down
(``request_shutdown``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..jobs import class_allow_list
from .admin import FlareAdmin
from .job_control import DEFAULT_JOB, JobControl
from .processes import LEDGER, KitProcesses
from .workspace import Workspace


class Deployment(Workspace):
    """A FLARE deployment run from this machine; see the module docstring. Constructing one starts nothing.

    Args:
        root: the folder everything lives under (see :class:`~.workspace.Workspace`).
        port: the server's port on this machine.
        env_overrides: environment variables for every FLARE command and kit.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.processes = KitProcesses(self.root / LEDGER, self.kit)
        self.admin = FlareAdmin(self)
        self.jobs = JobControl(self, self.admin)

    # ---------------------------------------------------------------- what each kind of deployment defines
    def start(self, only: list[str] | None = None, timeout: float = 90) -> None:
        """Start the server and the hospitals (or ``only`` those), then wait until the clients have connected."""
        raise NotImplementedError

    def request_shutdown(self, timeout: float) -> None:
        """Ask FLARE to shut every participant down; :meth:`stop` then waits for the processes."""
        raise NotImplementedError

    def configure_server(self) -> None:
        """Give deployment replies more time than the 10 s default: a loaded workstation runs 4 FLARE processes."""
        path = self.kit(self.server_name) / "local" / "resources.json"
        resources = json.loads(path.read_text())
        for server in resources.get("servers", []):
            server["admin_timeout"] = max(float(server.get("admin_timeout", 10.0)), 60.0)
        resources["class_allow_list"] = class_allow_list(resources.get("class_allow_list"), drills=True)
        path.write_text(json.dumps(resources, indent=2) + "\n")

    # ---------------------------------------------------------------- processes
    @property
    def ledger(self) -> Path:
        """The processes this deployment started: ``{participant: [{pid, create_time, cmdline}, ...]}``."""
        return self.processes.ledger

    def record_started(self, session: int, not_before: float, names: list[str]) -> None:
        self.processes.record_started(session, not_before, names)

    def running_pids(self) -> dict[str, list[int]]:
        """Live PIDs of every participant this deployment started (see :meth:`KitProcesses.running_pids`)."""
        return self.processes.running_pids()

    def start_site(self, site: str) -> None:
        """Start one participant from its kit, as the site's IT person would (``startup/start.sh``)."""
        self.processes.start_kit(site, self.env)

    def kill(self, name: str, keep_daemon: bool = False) -> list[int]:
        """Kill one participant hard (``keep_daemon``: its FLARE process tree only); see :meth:`KitProcesses.kill`."""
        return self.processes.kill(name, keep_daemon)

    def stop(self, timeout: float = 45) -> list[int]:
        """Shut FLARE down and wait for every PID the deployment started. Whoever the shutdown request does not
        reach (e.g. the server still lists a job lost in a server restart) gets the kits' local stop
        (``shutdown.fl``, obeyed by the supervisor loop); only what outlives that is killed, by PID, and only if this
        deployment started it (see :meth:`running_pids`). Returns the PIDs that had to be killed."""
        pids = [pid for group in self.running_pids().values() for pid in group]
        if not pids:
            return []
        self.request_shutdown(timeout)
        return self.processes.wait_or_kill(pids, self.participants(), timeout)

    # ---------------------------------------------------------------- admin
    def session(self, user: str | None = None, timeout: float = 30):
        """A Session API session as ``user`` (default: the lead); the caller closes it."""
        return self.admin.session(user, timeout)

    def admin_console(self, commands: list[str], user: str | None = None, timeout: float = 120) -> str:
        """Run the admin console of ``user``'s kit with ``commands``; returns what it printed."""
        return self.admin.console(commands, user, timeout)

    def wait_for_clients(self, sites: list[str], timeout: float = 90) -> None:
        self.admin.wait_for_clients(sites, timeout)

    def status(self) -> dict:
        """``{"processes": running_pids(), "connected_clients": [...], "jobs": [...]}``."""
        server = self.admin.clients_and_jobs()
        return {"processes": self.running_pids(), **server}

    # ---------------------------------------------------------------- jobs
    def stage_job(self, job: str | Path, gpus_per_site: int = 0, mem_per_gpu_in_GiB: int = 8) -> Path:
        """A copy of ``job`` to submit (see :meth:`JobControl.stage`)."""
        return self.jobs.stage(job, gpus_per_site, mem_per_gpu_in_GiB)

    def submit(
        self, job: str | Path = DEFAULT_JOB, via: str = "console", user: str | None = None, gpus_per_site: int = 0
    ) -> str:
        """Submit a job folder as ``user`` (default: the lead); returns the job id. ``via``: console | cli | api."""
        return self.jobs.submit_staged(self.jobs.stage(job, gpus_per_site), via, user)

    def job_status(self, job_id: str) -> str:
        return self.jobs.status(job_id)

    def wait(self, job_id: str, timeout: float = 1800, poll: float = 3.0, rejoin: bool = False) -> dict:
        """Wait until the job ends (see :meth:`JobControl.wait`); returns its meta."""
        return self.jobs.wait(job_id, timeout, poll, rejoin)

    def wait_until_clients_idle(self, job_id: str, timeout: float = 90) -> None:
        self.jobs.wait_until_clients_idle(job_id, timeout)

    def follow(self, job_id: str, timeout: float = 1800, rejoin: bool = True) -> tuple[list[str], dict]:
        """Wait for a job, continuing it when interrupted; returns the chain of job ids and the final meta."""
        return self.jobs.follow(job_id, timeout, rejoin)

    def resume(self, job_id: str, via: str = "api", user: str | None = None) -> str:
        """Continue a job from its last saved global model; returns the new job id."""
        return self.jobs.resume(job_id, via, user)

    def download(self, job_id: str, destination: Path | None = None) -> Path:
        """Download the job's results (global model, cross-site matrix, TensorBoard events, logs)."""
        return self.jobs.download(job_id, destination)

    def job_file(self, job_id: str, relative: str) -> Path:
        """A file of the job's server workspace, live or from its downloaded results."""
        return self.jobs.job_file(job_id, relative)

    def participation(self, job_id: str) -> dict:
        """The server's per-round record of contributing sites (``participation.json``)."""
        return self.jobs.participation(job_id)

    def returned_sites(self, job_id: str) -> list[str]:
        return self.jobs.returned_sites(job_id)
