"""Process control for a deployment run on this machine: start a kit, record what we started, end only that.

A kit is started in a session of its own (``start_new_session``); its supervisor loop (``daemon_pid.fl``) and FLARE
process (``pid.fl``) are recorded -- PID, start time and exact command line -- only when they are members of that
session, i.e. provably ours. Listing, waiting for and killing go by that record and the recorded processes'
descendants (job processes, a FLARE process the supervisor loop restarted); a recycled PID is not ours. A PID file or a
command line naming the kit proves nothing: anybody can write one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

LEDGER = "started_processes.json"  # under the deployment's root: the processes it started
PID_FILES = ("daemon_pid.fl", "pid.fl")  # a kit's supervisor loop and its FLARE process


class KitProcesses:
    """The processes a deployment started from its kits, recorded by identity in a ledger file
    (``{participant: [{pid, create_time, cmdline}, ...]}``), and the only processes it ever ends.

    Args:
        ledger: the ledger file (written atomically; an unreadable one records nothing).
        kit: gives a participant's kit folder (where its ``startup/start.sh`` and PID files are).
    """

    def __init__(self, ledger: Path, kit: Callable[[str], Path]) -> None:
        self.ledger = ledger
        self.kit = kit

    def read(self) -> dict[str, list[dict]]:
        try:
            return json.loads(self.ledger.read_text())
        except (OSError, ValueError):
            return {}

    def write(self, ledger: dict[str, list[dict]]) -> None:
        tmp = self.ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=2) + "\n")
        tmp.replace(self.ledger)

    def record_started(self, session: int, not_before: float, names: list[str]) -> None:
        """Record the supervisor loop and FLARE process of each of ``names`` that run in ``session``, the session
        of a process we just launched (``start_new_session``): a PID a kit's pid file names is recorded only
        when that process is provably ours, i.e. a member of our session started after we launched it."""
        ledger = self.read()
        for name in names:
            entries = []
            for pid_file in PID_FILES:
                proc = _proc(_read_pid(self.kit(name) / pid_file))
                if proc is not None and _session(proc.pid) == session and _started(proc) >= not_before:
                    entries.append(_identity(proc))
            if entries:
                ledger[name] = entries
        self.write(ledger)

    def running_pids(self) -> dict[str, list[int]]:
        """Live PIDs of every participant we started: the recorded processes still alive with the same start
        time and command line (a recycled PID is not ours), and their descendants (job processes, a FLARE process
        the supervisor loop restarted). A PID file alone proves nothing: anybody can write one."""
        found: dict[str, list[int]] = {}
        for name, entries in self.read().items():
            pids = set()
            for proc in filter(None, map(_verified, entries)):
                pids.add(proc.pid)
                pids.update(c.pid for c in _children(proc))
            if pids:
                found[name] = sorted(pids)
        return found

    def start_kit(self, name: str, env: dict[str, str]) -> None:
        """Start one participant from its kit (``startup/start.sh``), as the site's IT person would, and record it."""
        not_before = time.time() - 2  # create times are rounded down to the boot second; the session proves the rest
        session = start_kit(self.kit(name), env)
        _wait_for_daemon(self.kit(name), session)
        self.record_started(session, not_before, [name])

    def kill(self, name: str, keep_daemon: bool = False) -> list[int]:
        """Kill one participant hard, as a power cut would: daemon loop, FLARE process and its job processes.
        ``keep_daemon``: kill only the FLARE process tree, so the kit's own supervisor loop restarts it (a crash).
        Only processes we started (:meth:`running_pids`) are killed."""
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
            for pid_file in PID_FILES:
                (self.kit(name) / pid_file).unlink(missing_ok=True)
        return pids

    def wait_or_kill(self, pids: list[int], names: list[str], timeout: float) -> list[int]:
        """After a shutdown request: wait ``timeout`` for ``pids`` (ours: from :meth:`running_pids`) to end; then
        give the kits of ``names`` their local stop (``shutdown.fl``, obeyed by the supervisor loop) and wait 30 s
        more; kill what outlives that. Returns the PIDs that had to be killed."""
        procs = [p for p in map(_proc, pids) if p]
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        if alive:
            for name in names:
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
