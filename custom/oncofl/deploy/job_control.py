"""Jobs on a running deployment, through the admins' kits: stage and submit a job, wait for it and follow it through
interruptions (continuing it from its last global model), read its server-side records, download its results.

Submission works three ways: the admin console (``fl_admin.sh`` fed ``submit_job``), ``nvflare job submit``, and the
Session API. GPU requirements are written per site name into the submitted copy's ``meta.json`` (``nvflare job
submit`` rewrites ``@default`` and would drop them). Every submitted folder is kept under ``<root>/submitted/<job
id>/``: ``resume`` continues a job from it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .admin import FlareAdmin
from .resume import RESUME_CHECKPOINT, resume_folder
from .workspace import PocError, Workspace

DEFAULT_JOB = "prostate_mri_seg"  # a job name (built from the installed definition) or a job folder
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class JobInterrupted(PocError):
    """The server lost a running job (it restarted); the job can be continued with ``resume``."""


@dataclass(frozen=True)
class JobResults:
    """Where FLARE puts things inside a downloaded job result.

    Args:
        root: the downloaded result folder (what ``download`` returns).
    """

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


class JobControl:
    """Submits, follows and fetches the jobs of one deployment.

    Args:
        workspace: the deployment: its kits, root (for staged, submitted and downloaded jobs) and who is who.
        admin: opens the admins' sessions and runs their console.
    """

    def __init__(self, workspace: Workspace, admin: FlareAdmin) -> None:
        self.ws = workspace
        self.admin = admin

    # ---------------------------------------------------------------- submit
    def stage(self, job: str | Path, gpus_per_site: int = 0, mem_per_gpu_in_GiB: int = 8) -> Path:
        """A copy of ``job`` (a folder, or a job name built here) to submit; with GPUs, its resource spec names every
        hospital explicitly."""
        from ..jobs import job_folder

        job = job_folder(job, self.ws.root / "built_jobs")
        staged = self.ws.root / "staged_jobs" / job.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(job, staged)
        meta_path = staged / "meta.json"
        meta = json.loads(meta_path.read_text())
        if gpus_per_site:
            spec = {"num_of_gpus": gpus_per_site, "mem_per_gpu_in_GiB": mem_per_gpu_in_GiB}
            meta["resource_spec"] = {site: dict(spec) for site in self.ws.site_names}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return staged

    def submit_staged(self, staged: Path, via: str, user: str | None) -> str:
        """Submit a staged folder as ``user`` (default: the lead) ``via`` console | cli | api; returns the job id.
        The folder is kept under ``<root>/submitted/<job id>/`` for ``resume``."""
        user = user or self.ws.lead
        if via == "api":
            sess = self.admin.session(user)
            try:
                job_id = sess.submit_job(str(staged))
            finally:
                sess.close()
        else:
            job_id = self._submit_by_command(staged, via, user)
        kept = self.ws.root / "submitted" / job_id / staged.name  # what was submitted, for `resume`
        shutil.rmtree(kept.parent, ignore_errors=True)
        shutil.copytree(staged, kept)
        return job_id

    def _submit_by_command(self, staged: Path, via: str, user: str) -> str:
        """Submit with the admin console or ``nvflare job submit``; the job id is read from what they print."""
        if via == "cli":
            args = ("job", "submit", "-j", str(staged), "--startup-kit", str(self.ws.kit(user)))
            proc = self.ws.run_nvflare(*args, check=False)
            text = proc.stdout + proc.stderr
        elif via == "console":
            text = self.admin.console([f"submit_job {staged}", "bye"], user=user)
        else:
            raise ValueError(f"unknown submission path '{via}' (console, cli or api)")
        match = JOB_ID.search(text)
        if not match:
            raise PocError(f"submission via {via} as {user} returned no job id:\n{text[-3000:]}")
        return match.group(0)

    # ---------------------------------------------------------------- wait
    def status(self, job_id: str) -> str:
        sess = self.admin.session(self.ws.project_admin)
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
            meta, running = self._poll(job_id)
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
                self._stop_for_rejoin(job_id, back, poll)
            if time.monotonic() > deadline:
                raise PocError(f"job {job_id} still {status or 'unknown'} after {timeout:.0f} s")
            time.sleep(poll)

    def _poll(self, job_id: str) -> tuple[dict, set[str]]:
        """The job's meta and the ids of the jobs the server runs; both empty while the server is restarting."""
        try:
            sess = self.admin.session(self.ws.project_admin)
            try:
                return sess.get_job_meta(job_id), {j.job_id for j in sess.get_system_info().job_info}
            finally:
                sess.close()
        except PocError:
            raise
        except Exception:  # the server itself is restarting: keep asking
            return {}, set()

    def _stop_for_rejoin(self, job_id: str, back: list[str], poll: float) -> None:
        """Abort the job after its last completed round so that the restarted sites ``back`` can join the job that
        continues it; raises :class:`JobInterrupted` once the clients are idle."""
        sess = self.admin.session(self.ws.project_admin)
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

    def wait_until_clients_idle(self, job_id: str, timeout: float = 90) -> None:
        """After an abort, clients take a while to end their job processes; deploying the next job before that
        times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sess = self.admin.session(self.ws.project_admin)
            try:
                busy = [e for e in sess.get_client_job_status() or [] if job_id in json.dumps(e, default=str)]
            finally:
                sess.close()
            if not busy:
                return
            time.sleep(2)

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
                    self.admin.wait_for_clients(list(self.ws.site_names), timeout=60)
                except PocError:
                    self.admin.wait_for_clients([], timeout=60)
                chain.append(self.resume(chain[-1]))

    def resume(self, job_id: str, via: str = "api", user: str | None = None) -> str:
        """Continue an interrupted (or site-depleted) job from its last saved global model with every site that is
        connected now: a new job whose rounds continue the old numbering. Returns the new job id."""
        checkpoint = self.job_file(job_id, "app_server/FL_global_model.pt")
        rounds = self.participation(job_id)["rounds"]
        if not checkpoint.is_file() or not rounds:
            raise PocError(f"job {job_id} left no completed round on the server: resubmit it instead")
        source = next((self.ws.root / "submitted").glob(f"{job_id}/*/meta.json"), None)
        if source is None:
            raise PocError(
                f"job {job_id} was not submitted through `oncofl poc`; no copy of its definition to continue"
            )
        staged = resume_folder(
            source.parent,
            self.ws.root / "staged_jobs" / f"{source.parent.name}_resume",
            job_id=job_id,
            done=rounds[-1]["round"] + 1,
            checkpoint=checkpoint,
            # the server starts from the last global model, kept on the server's machine (here: this one)
            kept=self.ws.root / "resume_checkpoints" / job_id / RESUME_CHECKPOINT,
            deploy_map={"app_server": [self.ws.server_name], "app_clients": list(self.ws.site_names)},
        )
        return self.submit_staged(staged, via, user)

    # ---------------------------------------------------------------- results
    def download(self, job_id: str, destination: Path | None = None) -> Path:
        """Download the job's results (global model, cross-site matrix, TensorBoard events, logs)."""
        destination = Path(destination or self.ws.results).resolve()
        sess = self.admin.session(self.ws.project_admin)
        try:
            location = sess.download_job_result(job_id, str(destination))
        finally:
            sess.close()
        return Path(location)

    def job_file(self, job_id: str, relative: str) -> Path:
        """A file of the job's server workspace: live while the job runs, else from its downloaded results (FLARE
        moves a finished job's workspace into the job store)."""
        live = self.ws.kit(self.ws.server_name) / job_id / relative
        if live.exists():
            return live
        downloaded = self.ws.results / job_id
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
            job_started = (self.ws.kit(self.ws.server_name) / job_id / "log.txt").read_text(errors="replace")[:23]
            server_log = (self.ws.kit(self.ws.server_name) / "log.txt").read_text(errors="replace").splitlines()
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
