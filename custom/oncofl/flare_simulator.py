"""FLARE 2.9's simulator (``python -m nvflare.private.fed.app.simulator.simulator``) with one upstream race closed.

The race: the simulator runs one thread per client (``-t N``). Each thread starts a worker process, then writes its
client's name into one ``build_ctx`` dict that all the threads share, deep-copies the deploy arguments and sends
both to its worker. When two threads reach that code together, one worker gets the other's name. The worker then
runs as, say, site-1 inside site-3's workspace: site-3 never starts, and site-1 fails its first round when it writes
to ``.../site-3/simulate_job/app_site-1``. The job aborts (``remaining good clients < min_responses``). Seen here
when two simulators started at once on a loaded 2-core machine.

The fix sends each worker a copy of ``build_ctx`` whose client name is the one in its own deploy arguments, which
every thread copies and names for itself (``workspace = <simulator workspace>/<client>``). Everything else is FLARE's
simulator, unchanged. Usage is the same as FLARE's::

    python -m oncofl.flare_simulator JOB_FOLDER -w WORKSPACE -c site-1,site-2 -t 2
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nvflare.private.fed.simulator.simulator_const import SimulatorConstants


class OwnClientConnection:
    """A simulator->worker connection whose start-up message names the worker's own client.

    Args:
        conn: the connection FLARE's client runner opened to the worker; every other call goes to it unchanged.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def send(self, data: Any) -> None:
        if isinstance(data, dict) and SimulatorConstants.BUILD_CTX in data and SimulatorConstants.DEPLOY_ARGS in data:
            client = os.path.basename(os.path.normpath(data[SimulatorConstants.DEPLOY_ARGS].workspace))
            build_ctx = {**data[SimulatorConstants.BUILD_CTX], "client_name": client}
            data = {**data, SimulatorConstants.BUILD_CTX: build_ctx}
        self._conn.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def patch() -> None:
    """Wrap every connection FLARE's client runner opens to a worker (the runner process is forked from this one)."""
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorClientRunner

    original = SimulatorClientRunner._create_connection
    if getattr(original, "oncofl_patched", False):
        return

    def create_connection(self, open_port, timeout=60.0):
        return OwnClientConnection(original(self, open_port, timeout=timeout))

    create_connection.oncofl_patched = True
    SimulatorClientRunner._create_connection = create_connection


def main(argv: list[str] | None = None) -> int:
    from nvflare.private.fed.app.simulator.simulator import define_simulator_parser, run_simulator
    from nvflare.private.fed.app.utils import version_check

    version_check()
    patch()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    define_simulator_parser(parser)
    return run_simulator(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
