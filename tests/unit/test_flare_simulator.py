"""oncofl.flare_simulator: each simulator worker is told its own client's name, whatever the shared dict says."""

from __future__ import annotations

import threading
from multiprocessing.connection import Listener
from types import SimpleNamespace

from nvflare.private.fed.app.simulator.simulator_runner import SimulatorClientRunner
from nvflare.private.fed.simulator.simulator_const import SimulatorConstants

from oncofl import flare_simulator


def test_a_worker_gets_the_client_of_its_own_workspace_when_threads_race(tmp_path):
    """The race leaves the shared build_ctx naming the thread that wrote last (site-1) while this thread's worker
    runs site-3 (its own deploy_args workspace): the worker must be sent site-3."""
    flare_simulator.patch()
    flare_simulator.patch()  # idempotent: one wrapper, not two
    assert SimulatorClientRunner._create_connection.oncofl_patched
    received = []
    with Listener(("localhost", 0)) as listener:

        def accept():
            with listener.accept() as conn:
                received.append(conn.recv())
                received.append(conn.recv())

        worker = threading.Thread(target=accept)
        worker.start()
        conn = SimulatorClientRunner._create_connection(object(), listener.address[1], timeout=10)
        shared = {"client_name": "site-1", "other": 7}
        deploy_args = SimpleNamespace(workspace=str(tmp_path / "ws" / "site-3"))
        conn.send({SimulatorConstants.BUILD_CTX: shared, SimulatorConstants.DEPLOY_ARGS: deploy_args, "x": 1})
        conn.send(True)  # the runner's later messages pass through unchanged
        worker.join(timeout=10)
        conn.close()
    first, second = received
    assert first[SimulatorConstants.BUILD_CTX] == {"client_name": "site-3", "other": 7}
    assert first["x"] == 1 and first[SimulatorConstants.DEPLOY_ARGS].workspace.endswith("site-3")
    assert shared["client_name"] == "site-1"  # the other thread's dict is not changed under it
    assert second is True
