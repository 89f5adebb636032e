"""`oncofl poc` ends only processes it started: identified by PID + start time + exact command line, recorded only when
they run in the session the POC launched. A foreign process whose command line names the kit, a PID file pointing at
it, or a recorded PID now used by another process is never listed, stopped or killed. No FLARE process is started:
the kit's scripts here mimic FLARE's (a supervisor loop writing daemon_pid.fl, a child writing pid.fl)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from oncofl.deploy.poc import LEDGER, Poc

SITE = "hospital-a"
START = '#!/usr/bin/env bash\nDIR="$( cd "$( dirname "${BASH_SOURCE[0]}" )" && pwd )"\n"$DIR/sub_start.sh" &\n'
SUB_START = (
    "#!/usr/bin/env bash\n"
    'WS="$( cd "$( dirname "${BASH_SOURCE[0]}" )/.." && pwd )"\n'
    'echo $BASHPID > "$WS/daemon_pid.fl"\n'
    "while true; do\n"  # the supervisor loop restarts the FLARE process when it dies
    '  python3 -c "import time; time.sleep(600)" "$WS" &\n'
    '  echo $! > "$WS/pid.fl"\n'
    "  wait\n"
    "  sleep 0.2\n"
    "done\n"
)


def _fake_kit(poc: Poc, name: str) -> Path:
    startup = poc.kit(name) / "startup"
    startup.mkdir(parents=True)
    for script, text in (("start.sh", START), ("sub_start.sh", SUB_START)):
        (startup / script).write_text(text)
        (startup / script).chmod(0o700)
    return poc.kit(name)


@pytest.fixture
def foreign(tmp_path):
    """A process this POC did not start whose command line names the kit (a user's `tail -f`, an editor ...)."""
    kit = tmp_path / "poc" / "nvflare" / "oncofl_poc" / "prod_00" / SITE
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(kit / "startup" / "start.sh")])
    yield psutil.Process(proc.pid)
    proc.kill()  # by PID: only what this test started
    proc.wait()


def _wait_for_file(path: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.1)
    raise AssertionError(f"{path} never written")


def _wait_for_new_pid(path: Path, old: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _wait_for_file(path)
        if pid != old and psutil.pid_exists(pid):
            return pid
        time.sleep(0.1)
    raise AssertionError(f"{path} still names {old}")


def test_a_foreign_process_named_by_the_kits_pid_files_is_never_stopped_or_killed(tmp_path, foreign):
    poc = Poc(tmp_path / "poc")
    kit = _fake_kit(poc, SITE)
    for pid_file in ("daemon_pid.fl", "pid.fl"):  # a stale PID file whose PID now names someone else's process
        (kit / pid_file).write_text(f"{foreign.pid}\n")
    assert str(kit) in " ".join(foreign.cmdline())
    assert poc.running_pids() == {}
    assert poc.kill(SITE, keep_daemon=True) == [] and poc.kill(SITE) == [] and poc.stop() == []
    # a recorded PID that another process now carries (same PID, other start time): not ours either
    forged = {SITE: [{"pid": foreign.pid, "create_time": foreign.create_time() - 5, "cmdline": foreign.cmdline()}]}
    (poc.root / LEDGER).write_text(json.dumps(forged))
    assert poc.running_pids() == {} and poc.kill(SITE) == [] and poc.stop() == []
    assert foreign.is_running() and foreign.status() != psutil.STATUS_ZOMBIE


def test_processes_it_started_are_recorded_by_identity_and_only_they_are_killed(tmp_path, foreign):
    poc = Poc(tmp_path / "poc")
    kit = _fake_kit(poc, SITE)
    try:
        poc.start_site(SITE)
        daemon, child = _wait_for_file(kit / "daemon_pid.fl"), _wait_for_file(kit / "pid.fl")
        ledger = json.loads((poc.root / LEDGER).read_text())[SITE]
        assert ledger[0]["pid"] == daemon and ledger[0]["cmdline"] == psutil.Process(daemon).cmdline()
        assert ledger[0]["create_time"] == psutil.Process(daemon).create_time()
        assert poc.running_pids() == {SITE: sorted({daemon, child})}  # the child: a descendant of ours
        assert poc.kill(SITE, keep_daemon=True) == [child]  # a crash: the FLARE process only
        restarted = _wait_for_new_pid(kit / "pid.fl", child)  # by the supervisor loop, a descendant of ours
        assert poc.running_pids() == {SITE: sorted({daemon, restarted})}
        assert sorted(poc.kill(SITE)) == sorted({daemon, restarted})
        assert poc.running_pids() == {}
    finally:
        for pid in poc.running_pids().get(SITE, []):
            psutil.Process(pid).kill()
    assert foreign.is_running() and foreign.status() != psutil.STATUS_ZOMBIE
