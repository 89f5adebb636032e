"""Rehearse a deployment on one workstation: a real FLARE POC (server + 3 hospitals + admins, mTLS on localhost).

    oncofl poc demo                      # prepare -> start -> submit -> wait -> download -> stop, timed
    oncofl poc prepare [--gpus hospital-a=0 hospital-b=1]
    oncofl poc start | status | stop | clean
    oncofl poc submit [--job NAME|FOLDER] [--via console|cli|api] [--gpus-per-site 1]
    oncofl poc wait JOB_ID | download JOB_ID
    oncofl poc resume JOB_ID             # continue an interrupted job from its last global model
    oncofl poc start-site hospital-c     # restart one participant from its kit

Everything lives under one root (default ``poc/workspace``): ``nvflare/`` (the POC workspace, i.e.
``NVFLARE_POC_WORKSPACE``), ``data/`` (synthetic DICOM for the three hospitals, made if absent) and ``results/``.
The POC's project and each hospital's data config come with the package (``oncofl/deploy/poc_project/``); the data
config is written into the kit's ``local/oncofl_site.json``. The job carries no paths and no code: every participant
runs the oncofl installed in this environment. ``--port`` gives the POC its own port so tests and a second POC never
collide.

Submission works three ways, all through the lead admin's kit: the admin console (``fl_admin.sh`` fed
``submit_job``), ``nvflare job submit``, and the Session API. GPU requirements are written per site name into the
submitted copy's ``meta.json`` (``nvflare job submit`` rewrites ``@default`` and would drop them).

Processes: ``start`` launches the kits in a session of its own and records each participant's supervisor loop and
FLARE process (PID, start time, exact command line) only when it is a member of that session; ``stop`` asks FLARE to
shut down, waits for the recorded processes still alive under the same identity and their descendants, and kills
by PID only what is left of those. A PID file or a command line naming the kit proves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..jobs import class_allow_list
from .builders import site_privacy, site_resources

POC_PROJECT = Path(__file__).resolve().parent / "poc_project"
PROJECT_FILE = POC_PROJECT / "project.yml"
SITE_CONFIGS = POC_PROJECT / "site_configs"
PROJECT = "oncofl_poc"
SERVER = "server"
SITES = ("hospital-a", "hospital-b", "hospital-c")
PROJECT_ADMIN = "admin@consortium.org"
LEAD = "lead@consortium.org"
ORG_ADMIN = "itadmin@hospital-a.org"
DEFAULT_PORT = 8102
DEFAULT_JOB = "prostate_mri_seg"  # a job name (built from the installed definition) or a job folder
DEFAULT_ROOT = Path("poc") / "workspace"


RESUME_CHECKPOINT = "resume_from_global_model.pt"
LEDGER = "started_processes.json"  # under the POC root: the processes this POC started


class PocError(RuntimeError):
    """A POC step failed; the message says which and what to do."""


class JobInterrupted(PocError):
    """The server lost a running job (it restarted); the job can be continued with ``resume``."""


@dataclass
class Poc:
    """One POC installation under ``root``. Safe to construct any time; nothing runs until a method is called."""

    root: Path = DEFAULT_ROOT
    port: int = DEFAULT_PORT
    env_overrides: dict[str, str] = field(default_factory=dict)
    he: bool = False  # kits with CKKS contexts (FLARE's HEBuilder) for homomorphic-encryption jobs

    # who is who in this deployment (a provisioned consortium overrides them)
    project_name = PROJECT
    server_name = SERVER
    site_names = SITES
    project_admin = PROJECT_ADMIN
    lead = LEAD

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    # ---------------------------------------------------------------- layout
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

    def _nvflare(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "nvflare"), *args]
        proc = subprocess.run(  # umask 077: what FLARE writes (keys, the root CA's state, kits) is owner-only
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, umask=0o077
        )
        if check and proc.returncode != 0:
            raise PocError(f"`nvflare {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    # ---------------------------------------------------------------- prepare
    def prepare(self, gpus: dict[str, list[int]] | None = None, data: Path | None = None) -> None:
        """Provision the POC kits, make synthetic data if absent, give every hospital its data (and GPU) config."""
        if self.running_pids():
            raise PocError(f"a POC is running under {self.root}; run `oncofl poc stop` first")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".gitignore").write_text("# oncofl POC workspace: keys and kits, never committed\n*\n")
        text = PROJECT_FILE.read_text()
        text = re.sub(r"(fed_learn_port|admin_port): \d+", rf"\g<1>: {self.port}", text)
        if self.he:  # before the signature builder, which then signs the context files too
            signature = "  - path: nvflare.lighter.impl.signature.SignatureBuilder"
            text = text.replace(signature, "  - path: nvflare.lighter.impl.he.HEBuilder\n" + signature)
        project = self.root / "project.yml"
        project.write_text(text)
        self._nvflare("poc", "prepare", "-i", str(project), "--force")
        data = Path(data).resolve() if data else self.data
        if not (data / "site_configs").is_dir():
            from .. import synthetic

            synthetic.generate(data, seed=0)
        self.configure_server()
        for site in self.site_names:
            self.configure_site(site, data, (gpus or {}).get(site, []))

    def configure_site(self, site: str, data: Path, gpu_ids: list[int]) -> None:
        """What a hospital's IT does once: the data config and the GPUs the client may hand out to jobs."""
        config = json.loads((SITE_CONFIGS / f"{site}.json").read_text())
        for key in ("data_root", "cache_dir"):
            config[key] = str((data / config[key]).resolve())
        config["gpu_ids"] = list(gpu_ids)
        local = self.kit(site) / "local"
        (local / "oncofl_site.json").write_text(json.dumps(config, indent=2) + "\n")
        # the same site policy as a provisioned hospital kit: its privacy scope guards every update that leaves,
        # and its logs stay local (no log streaming to the server)
        (local / "privacy.json").write_text(json.dumps(site_privacy(self.he), indent=2) + "\n")
        defaults = json.loads((local / "resources.json.default").read_text())
        resources = site_resources(defaults, len(gpu_ids), 16 if gpu_ids else 0, drills=True)
        (local / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")

    def configure_server(self) -> None:
        """Give deployment replies more time than the 10 s default: a loaded workstation runs 4 FLARE processes."""
        path = self.kit(self.server_name) / "local" / "resources.json"
        resources = json.loads(path.read_text())
        for server in resources.get("servers", []):
            server["admin_timeout"] = max(float(server.get("admin_timeout", 10.0)), 60.0)
        resources["class_allow_list"] = class_allow_list(resources.get("class_allow_list"), drills=True)
        path.write_text(json.dumps(resources, indent=2) + "\n")

    # ---------------------------------------------------------------- start / stop
    def participants(self) -> list[str]:
        return [self.server_name, *self.site_names]

    @property
    def ledger(self) -> Path:
        """The processes this POC started: ``{participant: [{pid, create_time, cmdline}, ...]}``."""
        return self.root / LEDGER

    def _read_ledger(self) -> dict[str, list[dict]]:
        try:
            return json.loads(self.ledger.read_text())
        except (OSError, ValueError):
            return {}

    def _write_ledger(self, ledger: dict[str, list[dict]]) -> None:
        tmp = self.ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=2) + "\n")
        tmp.replace(self.ledger)

    def record_started(self, session: int, not_before: float, names: list[str]) -> None:
        """Record the supervisor loop and FLARE process of each of ``names`` that run in ``session``, the session
        of a process this POC just launched (``start_new_session``): a PID a kit's pid file names is recorded only
        when that process is provably ours, i.e. a member of our session started after we launched it."""
        ledger = self._read_ledger()
        for name in names:
            entries = []
            for pid_file in ("daemon_pid.fl", "pid.fl"):
                proc = _proc(_read_pid(self.kit(name) / pid_file))
                if proc is not None and _session(proc.pid) == session and _started(proc) >= not_before:
                    entries.append(_identity(proc))
            if entries:
                ledger[name] = entries
        self._write_ledger(ledger)

    def running_pids(self) -> dict[str, list[int]]:
        """Live PIDs of every participant this POC started: the recorded processes still alive with the same start
        time and command line (a recycled PID is not ours), and their descendants (job processes, a FLARE process
        the supervisor loop restarted). A PID file alone proves nothing: anybody can write one."""
        found: dict[str, list[int]] = {}
        for name, entries in self._read_ledger().items():
            pids = set()
            for proc in filter(None, map(_verified, entries)):
                pids.add(proc.pid)
                pids.update(c.pid for c in _children(proc))
            if pids:
                found[name] = sorted(pids)
        return found

    def start(self, only: list[str] | None = None, timeout: float = 90) -> None:
        """Start the server and the hospitals (or ``only`` those), then wait until every client has connected."""
        args = ["poc", "start", "--timeout", str(int(timeout))]
        for name in only or []:
            args += ["-p", name]
        not_before = time.time() - 2  # create times are rounded down to the boot second; the session proves the rest
        cmd = [str(Path(sys.executable).parent / "nvflare"), *args]
        launcher = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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

    def start_site(self, site: str) -> None:
        """Start one participant from its kit, as the site's IT person would (``startup/start.sh``)."""
        not_before = time.time() - 2
        session = start_kit(self.kit(site), self.env)
        _wait_for_daemon(self.kit(site), session)
        self.record_started(session, not_before, [site])

    def kill(self, name: str, keep_daemon: bool = False) -> list[int]:
        """Kill one participant hard, as a power cut would: daemon loop, FLARE process and its job processes.
        ``keep_daemon``: kill only the FLARE process tree, so the kit's own supervisor loop restarts it (a crash).
        Only processes this POC started (:meth:`running_pids`) are killed."""
        ours = set(self.running_pids().get(name, []))
        pids = sorted(ours)
        if keep_daemon:
            pid = _read_pid(self.kit(name) / "pid.fl")
            root = _proc(pid) if pid in ours else None
            pids = [pid, *(c.pid for c in _children(root))] if root else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs([p for p in map(_proc, pids) if p], timeout=30)
        if not keep_daemon:
            for pid_file in ("daemon_pid.fl", "pid.fl"):
                (self.kit(name) / pid_file).unlink(missing_ok=True)
        return pids

    def stop(self, timeout: float = 45) -> list[int]:
        """Shut FLARE down and wait for every PID the POC started. Whoever the admin shutdown does not reach (e.g.
        the server still lists a job lost in a server restart) gets the kits' local stop (``shutdown.fl``, obeyed by
        the supervisor loop); only what outlives that is killed, by PID, and only if this POC started it (see
        :meth:`running_pids`). Returns the PIDs that had to be killed."""
        pids = [pid for group in self.running_pids().values() for pid in group]
        if not pids:
            return []
        self.request_shutdown(timeout)
        procs = [p for p in map(_proc, pids) if p]
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        if alive:
            for name in self.participants():
                if (self.kit(name) / "daemon_pid.fl").is_file():
                    (self.kit(name) / "shutdown.fl").touch()
            _, alive = psutil.wait_procs(alive, timeout=30)
        for proc in alive:
            try:
                proc.kill()  # psutil checks the PID still names the process it inspected (no recycled PID)
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=15)
        return [p.pid for p in alive]

    def request_shutdown(self, timeout: float) -> None:
        """Ask FLARE to shut every participant down (``nvflare poc stop``); ``stop`` then waits for the PIDs."""
        try:
            self._nvflare("poc", "stop", timeout=timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            pass

    def clean(self) -> None:
        if self.running_pids():
            raise PocError("the POC is still running; run `oncofl poc stop` first")
        shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------------- admin
    def session(self, user: str | None = None, timeout: float = 30):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        user = user or self.lead
        return new_secure_session(user, str(self.kit(user)), timeout=timeout)

    def wait_for_clients(self, sites: list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        missing = set(sites)
        while True:
            try:
                sess = self.session(self.project_admin)
                try:
                    missing = set(sites) - {c.name for c in sess.get_connected_client_list()}
                finally:
                    sess.close()
            except Exception as e:  # the server may still be starting
                last = str(e)
            else:
                last = f"not connected: {sorted(missing)}"
                if not missing:
                    return
            if time.monotonic() > deadline:
                raise PocError(f"POC not ready after {timeout:.0f} s ({last}); see {self.prod}/*/log.txt")
            time.sleep(2)

    def status(self) -> dict:
        sess = self.session(self.project_admin)
        try:
            clients = sorted(c.name for c in sess.get_connected_client_list())
            jobs = sess.list_jobs()
        finally:
            sess.close()
        return {"processes": self.running_pids(), "connected_clients": clients, "jobs": jobs}

    def stage_job(self, job: str | Path, gpus_per_site: int = 0, mem_per_gpu_in_GiB: int = 8) -> Path:
        """A copy of ``job`` (a folder, or a job name built here) to submit; with GPUs, its resource spec names every
        hospital explicitly."""
        from ..jobs import job_folder

        job = job_folder(job, self.root / "built_jobs")
        staged = self.root / "staged_jobs" / job.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(job, staged)
        meta_path = staged / "meta.json"
        meta = json.loads(meta_path.read_text())
        if gpus_per_site:
            spec = {"num_of_gpus": gpus_per_site, "mem_per_gpu_in_GiB": mem_per_gpu_in_GiB}
            meta["resource_spec"] = {site: dict(spec) for site in self.site_names}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return staged

    def submit(
        self, job: str | Path = DEFAULT_JOB, via: str = "console", user: str | None = None, gpus_per_site: int = 0
    ) -> str:
        """Submit a job folder as ``user`` (default: the lead); returns the job id. ``via``: console | cli | api."""
        return self._submit_staged(self.stage_job(job, gpus_per_site), via, user)

    def _submit_staged(self, staged: Path, via: str, user: str | None) -> str:
        user = user or self.lead
        if via == "api":
            sess = self.session(user)
            try:
                job_id = sess.submit_job(str(staged))
            finally:
                sess.close()
        else:
            if via == "cli":
                args = ("job", "submit", "-j", str(staged), "--startup-kit", str(self.kit(user)))
                proc = self._nvflare(*args, check=False)
                text = proc.stdout + proc.stderr
            elif via == "console":
                text = self.admin_console([f"submit_job {staged}", "bye"], user=user)
            else:
                raise ValueError(f"unknown submission path '{via}' (console, cli or api)")
            match = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)
            if not match:
                raise PocError(f"submission via {via} as {user} returned no job id:\n{text[-3000:]}")
            job_id = match.group(0)
        kept = self.root / "submitted" / job_id / staged.name  # what was submitted, for `resume`
        shutil.rmtree(kept.parent, ignore_errors=True)
        shutil.copytree(staged, kept)
        return job_id

    def admin_console(self, commands: list[str], user: str | None = None, timeout: float = 120) -> str:
        """Run the admin console of ``user``'s kit (``startup/fl_admin.sh``) with ``commands`` on its stdin."""
        user = user or self.lead
        script = self.kit(user) / "startup" / "fl_admin.sh"
        admin = json.loads((self.kit(user) / "startup" / "fed_admin.json").read_text()).get("admin", {})
        if admin.get("uid_source", "user_input") != "cert":  # a provisioned console first asks "User Name:"
            commands = [user, *commands]
        proc = subprocess.run(
            ["bash", str(script)],
            input="\n".join(commands) + "\n",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc.stdout + proc.stderr

    def job_status(self, job_id: str) -> str:
        sess = self.session(self.project_admin)
        try:
            return sess.get_job_meta(job_id).get("status", "")
        finally:
            sess.close()

    def wait(self, job_id: str, timeout: float = 1800, poll: float = 3.0, rejoin: bool = False) -> dict:
        """Wait until the job ends. Raises :class:`JobInterrupted` when the server no longer runs a job it still
        lists as RUNNING (the server process restarted: FLARE 2.9 does not resume such a job), or, with ``rejoin``,
        after aborting the job because a site that dropped out has restarted and wants back in."""
        deadline = time.monotonic() + timeout
        orphan_polls = 0
        while True:
            try:
                sess = self.session(self.project_admin)
                try:
                    meta = sess.get_job_meta(job_id)
                    running = {j.job_id for j in sess.get_system_info().job_info}
                finally:
                    sess.close()
            except PocError:
                raise
            except Exception:  # the server itself is restarting: keep asking
                meta, running = {}, set()
            status = str(meta.get("status", ""))
            if status.startswith("FINISHED") or status.startswith("FAILED"):
                return meta
            orphan_polls = orphan_polls + 1 if status == "RUNNING" and job_id not in running else 0
            if orphan_polls >= 5:
                raise JobInterrupted(
                    f"job {job_id} is listed as RUNNING but no server process runs it: the FL server restarted "
                    f"during the job, and FLARE 2.9 cannot resume a job after a server restart. The global model "
                    f"of its last completed round is kept; continue from it with `oncofl poc resume "
                    f"{job_id}` (poc/README.md: 'Faults and recovery')."
                )
            back = self.returned_sites(job_id) if rejoin and status == "RUNNING" else []
            if back:
                sess = self.session(self.project_admin)
                try:
                    sess.abort_job(job_id)
                finally:
                    sess.close()
                self.wait(job_id, timeout=120, poll=poll)
                self.wait_until_clients_idle(job_id)
                raise JobInterrupted(
                    f"{', '.join(back)} dropped out of job {job_id} and has restarted; FLARE 2.9 does not hand a "
                    f"running job to a restarted client, so the job was stopped after its last completed round to "
                    f"continue with every site."
                )
            if time.monotonic() > deadline:
                raise PocError(f"job {job_id} still {status or 'unknown'} after {timeout:.0f} s")
            time.sleep(poll)

    def wait_until_clients_idle(self, job_id: str, timeout: float = 90) -> None:
        """After an abort, clients take a while to end their job processes; deploying the next job before that
        times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sess = self.session(self.project_admin)
            try:
                busy = [e for e in sess.get_client_job_status() or [] if job_id in json.dumps(e, default=str)]
            finally:
                sess.close()
            if not busy:
                return
            time.sleep(2)

    def job_file(self, job_id: str, relative: str) -> Path:
        """A file of the job's server workspace: live while the job runs, else from its downloaded results (FLARE
        moves a finished job's workspace into the job store)."""
        live = self.kit(self.server_name) / job_id / relative
        if live.exists():
            return live
        downloaded = self.results / job_id
        if not downloaded.is_dir():
            try:
                self.download(job_id)
            except Exception:  # not finished yet, or no workspace kept: nothing to read
                return live
        return downloaded / "workspace" / relative

    def participation(self, job_id: str) -> dict:
        """The server's per-round record of contributing sites (``participation.json``), empty before round 0."""
        try:
            return json.loads(self.job_file(job_id, "participation.json").read_text())
        except (OSError, ValueError):
            return {"rounds": [], "dropped": []}

    def returned_sites(self, job_id: str) -> list[str]:
        """Sites missing from the job's latest round that re-registered with the server after it started."""
        rounds = self.participation(job_id)["rounds"]
        if not rounds or not rounds[-1]["missing"]:
            return []
        # log lines start with their time stamp ("2026-11-27 21:12:13,264"): compare as text
        try:
            job_started = (self.kit(self.server_name) / job_id / "log.txt").read_text(errors="replace")[:23]
            server_log = (self.kit(self.server_name) / "log.txt").read_text(errors="replace").splitlines()
        except OSError:  # the job just finished
            return []
        return sorted(
            {
                site
                for line in server_log
                for site in rounds[-1]["missing"]
                if f"New client {site}@" in line and line[:23] > job_started
            }
        )

    def follow(self, job_id: str, timeout: float = 1800, rejoin: bool = True) -> tuple[list[str], dict]:
        """Wait for a job, continuing it (``resume``) after a server restart or to let a restarted site rejoin.
        Returns every job id of the chain and the final job's meta."""
        chain = [job_id]
        while True:
            try:
                return chain, self.wait(chain[-1], timeout, rejoin=rejoin)
            except JobInterrupted as e:
                print(f"{e}\n-> resuming from the last global model", flush=True)
                try:  # after a server restart the clients re-register within seconds; a dead site is not waited for
                    self.wait_for_clients(list(self.site_names), timeout=60)
                except PocError:
                    self.wait_for_clients([], timeout=60)
                chain.append(self.resume(chain[-1]))

    def resume(self, job_id: str, via: str = "api", user: str | None = None) -> str:
        """Continue an interrupted (or site-depleted) job from its last saved global model with every site that is
        connected now: a new job whose rounds continue the old numbering. Returns the new job id."""
        checkpoint = self.job_file(job_id, "app_server/FL_global_model.pt")
        rounds = self.participation(job_id)["rounds"]
        if not checkpoint.is_file() or not rounds:
            raise PocError(f"job {job_id} left no completed round on the server: resubmit it instead")
        done = rounds[-1]["round"] + 1
        source = next((self.root / "submitted").glob(f"{job_id}/*/meta.json"), None)
        if source is None:
            raise PocError(
                f"job {job_id} was not submitted through `oncofl poc`; no copy of its definition to continue"
            )
        staged = self.root / "staged_jobs" / f"{source.parent.name}_resume"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source.parent, staged)
        # the checkpoint goes to the server only: a client deployment is one message, and the transport refuses
        # messages above a few MB (a DenseNet121 checkpoint alone is 28 MB)
        app = staged / "app"
        shutil.copytree(app, staged / "app_server")
        shutil.copytree(app, staged / "app_clients")
        shutil.rmtree(app)
        (staged / "app_server" / "config" / "config_fed_client.json").unlink()
        (staged / "app_clients" / "config" / "config_fed_server.json").unlink()
        config_path = staged / "app_server" / "config" / "config_fed_server.json"
        config = json.loads(config_path.read_text())
        for item in config["workflows"]:
            if item["path"].endswith("ScatterAndGather"):
                args = item["args"]
                total = args.get("start_round", 0) + args["num_rounds"]
                if done >= total:
                    raise PocError(f"job {job_id} completed all {total} rounds; nothing to resume")
                args.update(start_round=done, num_rounds=total - done)
        # the server starts from the last global model, kept on the server's machine (here: this one); the job stays
        # without code (an app_server/custom/ folder would make it a BYOC job, which provisioned sites refuse)
        kept = self.root / "resume_checkpoints" / job_id / RESUME_CHECKPOINT
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkpoint, kept)
        for item in config["components"]:
            if item["id"] == "persistor":
                item["args"]["source_ckpt_file_full_name"] = str(kept.resolve())
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        meta = json.loads((staged / "meta.json").read_text())
        meta["name"] = f"{meta.get('name', source.parent.name)}_resume"
        meta["deploy_map"] = {"app_server": [self.server_name], "app_clients": list(self.site_names)}
        (staged / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return self._submit_staged(staged, via, user)

    def download(self, job_id: str, destination: Path | None = None) -> Path:
        """Download the job's results (global model, cross-site matrix, TensorBoard events, logs)."""
        destination = Path(destination or self.results).resolve()
        sess = self.session(self.project_admin)
        try:
            location = sess.download_job_result(job_id, str(destination))
        finally:
            sess.close()
        return Path(location)


def start_kit(kit: Path, env: dict[str, str]) -> int:
    """Run a kit's ``startup/start.sh`` in a new session, its output appended to ``<kit>/console.log``; returns the
    session id (the launched process's PID), which everything the script starts inherits."""
    with open(kit / "console.log", "a") as log:
        proc = subprocess.Popen(
            ["bash", str(kit / "startup" / "start.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def _proc(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _started(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return 0.0


def _identity(proc: psutil.Process) -> dict:
    """What names one process for good: its PID, start time and exact command line."""
    return {"pid": proc.pid, "create_time": proc.create_time(), "cmdline": proc.cmdline()}


def _verified(entry: dict) -> psutil.Process | None:
    """The live process ``entry`` recorded, or None when that PID is gone or now names another process."""
    proc = _proc(entry.get("pid"))
    try:
        if proc and proc.create_time() == entry["create_time"] and proc.cmdline() == entry["cmdline"]:
            return proc
    except (psutil.Error, KeyError):
        pass
    return None


def _children(proc: psutil.Process | None) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True) if proc else []
    except psutil.Error:
        return []


def _wait_for_daemon(kit: Path, session: int, timeout: float = 120) -> None:
    """Wait until the kit's supervisor loop, started in ``session``, has written its PID file (or the session
    ended: the start failed, which the caller's connection check reports)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon = _read_pid(kit / "daemon_pid.fl")
        if daemon is not None and _session(daemon) == session:
            return
        if not any(_session(p.pid) == session for p in psutil.process_iter()):
            return
        time.sleep(0.2)


@dataclass(frozen=True)
class JobResults:
    """Where FLARE puts things inside a downloaded job result."""

    root: Path

    def _find(self, name: str) -> Path:
        hits = sorted(self.root.rglob(name))
        if not hits:
            raise PocError(f"{name} not found in the downloaded results {self.root}")
        return hits[0]

    @property
    def global_model(self) -> Path:
        return self._find("FL_global_model.pt")

    @property
    def best_model(self) -> Path:
        return self._find("best_FL_global_model.pt")

    @property
    def cross_site(self) -> Path:
        return self._find("cross_val_results.json")

    @property
    def server_log(self) -> Path:
        return self._find("log.txt")

    @property
    def tb_events(self) -> Path:
        return self._find("tb_events")


def demo(poc: Poc, job: Path, via: str, timeout: float) -> int:
    """The whole rehearsal, each step timed; the POC is stopped even when a step fails."""
    from ..simulate import cross_site_table

    timings: list[tuple[str, float]] = []

    def step(name: str, fn, *args, **kwargs):
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings.append((name, time.perf_counter() - t0))
        print(f"[{name}] done in {timings[-1][1]:.1f} s", flush=True)
        return out

    try:
        step("prepare", poc.prepare)
        step("start", poc.start)
        job_id = step(f"submit ({via})", poc.submit, job, via)
        print(f"job {job_id}")
        chain, meta = step("run", poc.follow, job_id, timeout)
        print(f"job status: {meta.get('status')}" + (f" (continued as {', '.join(chain[1:])})" if chain[1:] else ""))
        result = JobResults(step("download", poc.download, chain[-1]))
    finally:
        left = step("stop", poc.stop)
        if left:
            print(f"killed {len(left)} process(es) that did not stop in time: {left}")
    print(f"\nresults       : {result.root}")
    print(f"global model  : {result.global_model}")
    print(f"cross-site    : {result.cross_site}\n{cross_site_table(result.cross_site)}")
    print(f"TensorBoard   : tensorboard --logdir {result.tb_events}")
    holdout = poc.data / "holdout"
    if holdout.is_dir() and Path(job).name == DEFAULT_JOB:
        from ..evaluation import holdout_metric

        initial, final = holdout_metric(None, holdout), holdout_metric(result.global_model, holdout)
        print(f"held-out Dice (cases no hospital trained on): initial {initial:.3f} -> final global {final:.3f}")
    print("\nstep timings (s): " + ", ".join(f"{n} {s:.1f}" for n, s in timings))
    return 0 if str(meta.get("status", "")).startswith("FINISHED") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="where the POC lives")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--gpus", nargs="*", default=[], help="bind hospitals to GPUs: hospital-a=0 hospital-b=1,2")
    p.add_argument("--data", default=None, help="existing synthetic data folder (default: <root>/data, made)")
    p.add_argument("--he", action="store_true", help="provision CKKS contexts for homomorphic-encryption jobs")
    sub.add_parser("start")
    sub.add_parser("status")
    p = sub.add_parser("submit")
    p.add_argument("--job", default=DEFAULT_JOB, help="a job folder, or a job name (built from the installed oncofl)")
    p.add_argument("--via", choices=["console", "cli", "api"], default="console")
    p.add_argument("--gpus-per-site", type=int, default=0)
    for name in ("wait", "download", "resume"):
        p = sub.add_parser(name)
        p.add_argument("job_id")
    p = sub.add_parser("start-site", help="(re)start one participant from its kit, e.g. after it crashed")
    p.add_argument("name", choices=[SERVER, *SITES])
    sub.add_parser("stop")
    sub.add_parser("clean")
    p = sub.add_parser("demo")
    p.add_argument("--job", default=DEFAULT_JOB, help="a job folder, or a job name (built from the installed oncofl)")
    p.add_argument("--via", choices=["console", "cli", "api"], default="console")
    p.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    poc = Poc(Path(args.root), port=args.port, he=getattr(args, "he", False))
    if args.cmd == "prepare":
        gpus = {}
        for item in args.gpus:
            site, _, ids = item.partition("=")
            if site not in SITES or not ids:
                parser.error(f"--gpus expects <hospital>=<id>[,<id>] with hospital in {SITES}, got '{item}'")
            gpus[site] = [int(i) for i in ids.split(",")]
        poc.prepare(gpus, Path(args.data) if args.data else None)
        print(f"POC ready under {poc.root} (port {poc.port}); kits in {poc.prod}")
    elif args.cmd == "start":
        poc.start()
        print(f"server and {', '.join(SITES)} running")
    elif args.cmd == "status":
        state = poc.status()
        for name, pids in state["processes"].items():
            print(f"{name:12} running, PIDs {pids}")
        print(f"connected clients: {', '.join(state['connected_clients']) or 'none'}")
        for job in state["jobs"]:
            print(f"job {job.get('job_id')} {job.get('job_name', '')} {job.get('status')}")
    elif args.cmd == "submit":
        print(poc.submit(args.job, args.via, gpus_per_site=args.gpus_per_site))
    elif args.cmd == "wait":
        try:
            meta = poc.wait(args.job_id)
        except JobInterrupted as e:
            print(e, file=sys.stderr)
            return 3
        print(f"{args.job_id}: {meta.get('status')} after {meta.get('duration')}")
    elif args.cmd == "download":
        print(poc.download(args.job_id))
    elif args.cmd == "resume":
        print(poc.resume(args.job_id))
    elif args.cmd == "start-site":
        poc.start_site(args.name)
    elif args.cmd == "stop":
        left = poc.stop()
        print("stopped" + (f"; killed leftover PIDs {left}" if left else ""))
    elif args.cmd == "clean":
        poc.clean()
    elif args.cmd == "demo":
        return demo(poc, args.job, args.via, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
