"""The admin side of a running deployment, through an admin's startup kit: Session API sessions, the admin console
(``startup/fl_admin.sh``), which clients are connected, and the shutdown request."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .workspace import PocError, Workspace


class FlareAdmin:
    """Talks to the running FLARE server as one of the deployment's admins, with that admin's kit.

    Args:
        workspace: the deployment: its kits (one per admin), environment and who is who.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace

    def session(self, user: str | None = None, timeout: float = 30):
        """A Session API session as ``user`` (default: the lead); the caller closes it."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        user = user or self.ws.lead
        return new_secure_session(user, str(self.ws.kit(user)), timeout=timeout)

    def console(self, commands: list[str], user: str | None = None, timeout: float = 120) -> str:
        """Run the admin console of ``user``'s kit (``startup/fl_admin.sh``) with ``commands`` on its stdin."""
        user = user or self.ws.lead
        script = self.ws.kit(user) / "startup" / "fl_admin.sh"
        admin = json.loads((self.ws.kit(user) / "startup" / "fed_admin.json").read_text()).get("admin", {})
        if admin.get("uid_source", "user_input") != "cert":  # a provisioned console first asks "User Name:"
            commands = [user, *commands]
        proc = subprocess.run(
            ["bash", str(script)],
            input="\n".join(commands) + "\n",
            env=self.ws.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc.stdout + proc.stderr

    def wait_for_clients(self, sites: list[str], timeout: float = 90) -> None:
        """Wait until every one of ``sites`` is connected to the server (the server itself may still be starting)."""
        deadline = time.monotonic() + timeout
        missing = set(sites)
        while True:
            try:
                sess = self.session(self.ws.project_admin)
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
                raise PocError(f"POC not ready after {timeout:.0f} s ({last}); see {self.ws.prod}/*/log.txt")
            time.sleep(2)

    def clients_and_jobs(self) -> dict:
        """The connected clients (sorted names) and the server's job list."""
        sess = self.session(self.ws.project_admin)
        try:
            clients = sorted(c.name for c in sess.get_connected_client_list())
            jobs = sess.list_jobs()
        finally:
            sess.close()
        return {"connected_clients": clients, "jobs": jobs}

    def shutdown_all(self) -> None:
        """Ask the server to shut every participant down, itself included (as the project admin). When the server
        is down already, says so on stderr: the caller falls back to the kits' local stop."""
        from nvflare.fuel.flare_api.api_spec import TargetType

        try:
            sess = self.session(self.ws.project_admin)
            try:
                sess.shutdown(TargetType.ALL)
            finally:
                sess.close()
        except Exception as e:  # the server is down already: stop() falls back to the kits' shutdown.fl
            print(f"admin shutdown did not go through ({e}); using the kits' local stop", file=sys.stderr)
