"""Provision the consortium, add hospitals later, and rehearse the whole deployment on this machine.

For the consortium lead:

    oncofl provision provision            # kits for the real deployment -> provisioning/workspace/
    oncofl provision add-site hospital-d --org hospital_d --gpus 1 --gpu-mem 24
    oncofl provision kits                 # who gets which kit (and the zip to send them)

Rehearsal on one machine (the same kits, pointed at localhost; each hospital configured with synthetic data):

    oncofl provision provision --rehearse [--port 8302]
    oncofl provision start | status | stop

``provision`` runs ``nvflare provision -c provisioning`` on a copy of ``project.yml`` kept in the workspace next to
``state/`` (the root CA): that copy is the consortium's record, and ``add-site`` appends to it. ``add-site`` uses
FLARE's dynamic provisioning (``--add-client``): the new kit is signed by the same root CA, nobody else's kit
changes, and the running server accepts the new site without a restart.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from .deployment import Deployment
from .workspace import PocError

PROJECT_FILE = Path("provisioning") / "project.yml"  # the consortium's own, in its repository
DEFAULT_ROOT = Path("provisioning") / "workspace"
DEFAULT_REHEARSAL_PORT = 8302
REHEARSAL_DATA = {"hospital-a": "site-1", "hospital-b": "site-2", "hospital-c": "site-3"}  # synthetic data folders


def restrict_keys(workspace: Path) -> None:
    """Owner-only access to key material under a FLARE workspace: every ``state/`` folder (it holds the root CA's
    private key) and every private key file in the kits (FLARE 2.9 writes them world-readable under umask 022)."""
    for state in Path(workspace).glob("*/state"):
        for path in [state, *state.rglob("*")]:
            path.chmod(0o700 if path.is_dir() else 0o600)
    for key in Path(workspace).rglob("*.key"):
        key.chmod(0o600)


def zip_owner_only(folder: Path, archive: Path) -> Path:
    """Zip ``folder`` into ``archive``, created owner-only (mode 600) before any byte is written."""
    archive.unlink(missing_ok=True)
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).rglob("*")):
            zf.write(path, path.relative_to(folder))
    return archive


def _project(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _participants(project: dict, kind: str) -> list[dict]:
    return [p for p in project["participants"] if p["type"] == kind]


def wheel_source() -> Path:
    """The checkout the imported oncofl comes from (``<checkout>/custom/oncofl``)."""
    import oncofl

    return Path(oncofl.__file__).resolve().parents[2]


def build_wheel(out_dir: Path) -> Path:
    """The oncofl wheel of this checkout (the one this process imports), built into ``out_dir``."""
    source = wheel_source()
    if not (source / "pyproject.toml").is_file():
        raise PocError("oncofl is not installed from a checkout here: pass --wheel <oncofl-*.whl> (and --requirements)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("oncofl-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:  # a clean copy: no stale build/ of the checkout ends up in the wheel
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, Path(tmp) / name)
        skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(source / "custom", Path(tmp) / "custom", ignore=skip)
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir)]
        proc = subprocess.run([*pip, tmp], capture_output=True, text=True)
    wheels = sorted(out_dir.glob("oncofl-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise PocError(f"building the oncofl wheel failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wheels[0]


def with_package(text: str, wheel: Path, requirements: Path) -> str:
    """The project with its PackageBuilder pointed at ``wheel`` and ``requirements`` (added before the signature
    builder when the project does not list one)."""
    project = yaml.safe_load(text)
    builders = project["builders"]
    package = next((b for b in builders if b["path"].endswith("PackageBuilder")), None)
    if package is None:
        package = {"path": "oncofl.deploy.builders.PackageBuilder"}
        sign = next((i for i, b in enumerate(builders) if b["path"].endswith("SignStartupBuilder")), len(builders))
        builders.insert(sign, package)
    package["args"] = {"wheel": str(Path(wheel).resolve()), "requirements": str(Path(requirements).resolve())}
    return yaml.safe_dump(project, sort_keys=False)


def rehearsal_project(text: str, port: int, storage: Path) -> str:
    """The project for a one-machine rehearsal: the same participants and builders; the server answers on
    ``localhost:port`` (its certificate also names localhost) and keeps its job store under ``storage``."""
    project = yaml.safe_load(text)
    server = _participants(project, "server")[0]
    server["default_host"] = "localhost"
    server["host_names"] = sorted({*server.get("host_names", []), "localhost", "127.0.0.1"})
    server["fed_learn_port"] = server["admin_port"] = port
    for builder in project["builders"]:
        if builder["path"].endswith("SiteTemplateBuilder"):
            builder.setdefault("args", {})["server_storage"] = str(storage)
    return yaml.safe_dump(project, sort_keys=False)


class Consortium(Deployment):
    """A provisioned deployment under ``root``: ``project.yml`` (the record), ``nvflare/<project>/state`` (root CA)
    and ``prod_NN`` kit folders. For a rehearsal the kits run here, started from their own ``startup/start.sh``
    and stopped through the project admin's console (or their ``shutdown.fl``), exactly as the sites would.

    What it shares with the POC -- the workspace's folders and environment, the record of the processes it started,
    the admin sessions and console, job submission and results -- comes from
    :class:`~oncofl.deploy.deployment.Deployment`; who is who comes from the consortium's ``project.yml``.

    Args:
        root: the provisioning workspace (it will hold the root CA's private key). Default ``provisioning/workspace``.
        port: the server's port for a rehearsal on this machine (a real deployment's port is in ``project.yml``).
        env_overrides: environment variables for every FLARE command and kit (tests give each its own HOME).
    """

    def __init__(self, root: Path = DEFAULT_ROOT, port: int = DEFAULT_REHEARSAL_PORT, env_overrides=None):
        super().__init__(Path(root), port, dict(env_overrides or {}))
        self._load_names()

    def _load_names(self) -> None:
        """Who is who: from the workspace's record once provisioned, else from the committed project.yml."""
        project = _project(self.project_file if self.project_file.is_file() else PROJECT_FILE)
        self.project_name = project["name"]
        self.server_name = _participants(project, "server")[0]["name"]
        admins = {a["role"]: a["name"] for a in _participants(project, "admin")}
        self.project_admin, self.lead = admins["project_admin"], admins["lead"]
        self.org_admin, self.member = admins.get("org_admin"), admins.get("member")
        self.site_names = tuple(c["name"] for c in _participants(project, "client"))

    @property
    def project_file(self) -> Path:
        return self.root / "project.yml"

    @property
    def state(self) -> Path:
        return self.flare_ws / self.project_name / "state"

    def kit(self, name: str) -> Path:
        """A participant's kit as first issued (an added site's kit is in a later ``prod_NN``)."""
        for prod in sorted((self.flare_ws / self.project_name).glob("prod_*")):
            if (prod / name / "startup").is_dir():
                return prod / name
        return self.prod / name

    # ---------------------------------------------------------------- provisioning
    def provision(
        self,
        source: Path = PROJECT_FILE,
        rehearse: bool = False,
        wheel: Path | None = None,
        requirements: Path | None = None,
    ) -> None:
        """Issue every kit. ``wheel``: the oncofl wheel to put into the kits (default: built from this checkout);
        ``requirements``: its pinned requirements (default: the checkout's requirements.txt)."""
        if self.state.is_dir():
            raise PocError(
                f"{self.root} already holds a provisioned consortium (its root CA is in {self.state}); re-provisioning "
                f"would issue new certificates to everyone. Add a site with `add-site`, or use another --root."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        # the workspace holds the root CA's private key and every participant's: never committed, wherever it lies
        (self.root / ".gitignore").write_text("# oncofl provisioning workspace: keys and kits, never committed\n*\n")
        text = Path(source).read_text()
        if rehearse:
            text = rehearsal_project(text, self.port, self.root / "server_storage")
        if wheel is None:
            wheel = build_wheel(self.root / "wheel")
            requirements = requirements or Path(wheel_source()) / "requirements.txt"
        if requirements is None or not Path(requirements).is_file():
            raise PocError("pass --requirements <pinned requirements file> with --wheel")
        text = with_package(text, Path(wheel), Path(requirements))
        self.project_file.write_text(text)
        self._provision()
        self._load_names()
        restrict_keys(self.flare_ws)

    def _provision(self, *extra: str) -> None:
        self.run_nvflare(
            "provision",
            "-p",
            str(self.project_file),
            "-w",
            str(self.flare_ws),
            "--force",
            *extra,
        )

    def add_site(self, name: str, org: str, gpus: int = 0, gpu_mem: int = 0) -> Path:
        """Issue a kit for a new hospital with FLARE's dynamic provisioning; returns the new kit folder."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", org):
            raise PocError(f"org '{org}' must be letters, digits and '_' only (FLARE's rule)")
        project = _project(self.project_file)
        if any(p["name"] == name for p in project["participants"]):
            raise PocError(f"'{name}' is already a participant of {self.project_name}")
        site = {"name": name, "type": "client", "org": org}
        if gpus:
            site["capacity"] = {"num_of_gpus": gpus, "mem_per_gpu_in_GiB": gpu_mem}
        request = self.root / f"add_{name}.yml"
        request.write_text(yaml.safe_dump({k: v for k, v in site.items() if k != "type"}, sort_keys=False))
        self._provision("--add-client", str(request))
        restrict_keys(self.flare_ws)
        project["participants"].append(site)
        self.project_file.write_text(yaml.safe_dump(project, sort_keys=False))
        self.site_names = (*self.site_names, name)
        return self.kit(name)

    def kits(self) -> list[dict]:
        """Who gets which kit."""
        project = _project(self.project_file)
        rows = []
        for p in project["participants"]:
            role = {"server": "FL server (coordinating centre)", "client": "hospital site"}.get(p["type"])
            rows.append(
                {
                    "participant": p["name"],
                    "org": p["org"],
                    "role": role or f"admin ({p['role']})",
                    "kit": str(self.kit(p["name"])),
                }
            )
        return rows

    def package(self) -> Path:
        """One zip per kit under ``<root>/distribute/`` (owner-only: each holds a private key), to hand over through
        a secure channel."""
        out = self.root / "distribute"
        out.mkdir(mode=0o700, exist_ok=True)
        out.chmod(0o700)
        for row in self.kits():
            zip_owner_only(Path(row["kit"]), out / f"{row['participant']}.zip")
        return out

    def root_ca_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the consortium's root CA: the lead gives it to every site's IT through another
        channel than the kit (``oncofl site configure --ca-fingerprint``)."""
        from .site import ca_fingerprint

        return ca_fingerprint(self.kit(self.server_name) / "startup" / "rootCA.pem")

    # ---------------------------------------------------------------- rehearsal
    def configure_for_rehearsal(self, data: Path | None = None, sites: list[str] | None = None) -> None:
        """What each hospital's IT does, with the synthetic data: ``oncofl site configure``, no GPUs."""
        from .site import configure

        data = Path(data).resolve() if data else self.data
        if not (data / "site_configs").is_dir():
            from .. import synthetic

            synthetic.generate(data, seed=0)
        for site in sites or self.site_names:
            folder = REHEARSAL_DATA.get(site, "site-3")  # an added hospital rehearses on hospital-c's images
            configure(
                self.kit(site),
                data_root=data / folder,
                cache_dir=data / "cache" / site,
                gpu_ids=[],
                ca_fingerprint=self.root_ca_fingerprint(),
            )
        self.configure_server()

    def start(self, only: list[str] | None = None, timeout: float = 90) -> None:
        names = only or self.participants()
        if self.server_name in names:
            self.start_site(self.server_name)
        for name in names:
            if name != self.server_name:
                self.start_site(name)
        self.wait_for_clients([n for n in names if n != self.server_name], timeout)

    def request_shutdown(self, timeout: float) -> None:
        """Ask every participant to shut down through the project admin's session (as the consortium would); when
        the server is down already, :meth:`stop` falls back to the kits' ``shutdown.fl``."""
        self.admin.shutdown_all()


def print_kits(consortium: Consortium) -> None:
    """Who gets which kit, the zips to send, and the root CA fingerprint to give out through another channel."""
    out = consortium.package()
    print(f"{'participant':34} {'org':12} {'role':32} kit")
    for row in consortium.kits():
        print(f"{row['participant']:34} {row['org']:12} {row['role']:32} {row['kit']}")
    print(f"\nzipped for distribution: {out}/<participant>.zip (send each to its owner only: it holds a key)")
    print(
        f"root CA fingerprint (SHA-256): {consortium.root_ca_fingerprint()}\ngive it to every site's IT through "
        "another channel than the kit (phone, signed letter); they pass it to `oncofl site configure "
        "--ca-fingerprint`"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the provisioning workspace (holds the root CA)")
    parser.add_argument("--port", type=int, default=DEFAULT_REHEARSAL_PORT, help="rehearsal port")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provision", help="issue every participant's kit")
    p.add_argument("--project", default=str(PROJECT_FILE))
    p.add_argument("--rehearse", action="store_true", help="kits for localhost, configured with synthetic data")
    p.add_argument("--wheel", default=None, help="the oncofl wheel for the kits (default: built from this checkout)")
    p.add_argument("--requirements", default=None, help="its pinned requirements (default: requirements.txt)")
    p = sub.add_parser("add-site", help="issue a kit for a new hospital; nobody else's kit changes")
    p.add_argument("name")
    p.add_argument("--org", required=True)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--gpu-mem", type=int, default=0, help="GiB per GPU")
    sub.add_parser("kits", help="who gets which kit; zips them under <root>/distribute/")
    sub.add_parser("start", help="rehearsal: start the server and every hospital from their kits")
    sub.add_parser("status")
    sub.add_parser("stop")
    return parser


def provision_kits(consortium: Consortium, args: argparse.Namespace) -> None:
    """``provision``: issue every kit (configured with synthetic data for a rehearsal), then list them as ``kits``."""
    consortium.provision(
        Path(args.project),
        rehearse=args.rehearse,
        wheel=Path(args.wheel) if args.wheel else None,
        requirements=Path(args.requirements) if args.requirements else None,
    )
    if args.rehearse:
        consortium.configure_for_rehearsal()
    print_kits(consortium)


def add_site(consortium: Consortium, args: argparse.Namespace) -> None:
    kit = consortium.add_site(args.name, args.org, args.gpus, args.gpu_mem)
    print(f"kit for {args.name}: {kit}\nsend it to {args.name}'s IT; their checklist: provisioning/README.md")
    if (consortium.root / "server_storage").is_dir():  # a rehearsal: configure it like the others
        consortium.configure_for_rehearsal(sites=[args.name])


def start(consortium: Consortium, args: argparse.Namespace) -> None:
    consortium.start()
    print(f"server and {', '.join(consortium.site_names)} running on localhost:{consortium.port}")


def status(consortium: Consortium, args: argparse.Namespace) -> None:
    state = consortium.status()
    print(f"connected clients: {', '.join(state['connected_clients']) or 'none'}")
    for job in state["jobs"]:
        print(f"job {job.get('job_id')} {job.get('job_name', '')} {job.get('status')}")


def stop(consortium: Consortium, args: argparse.Namespace) -> None:
    left = consortium.stop()
    print("stopped" + (f"; killed leftover PIDs {left}" if left else ""))


COMMANDS = {
    "provision": provision_kits,
    "add-site": add_site,
    "kits": lambda consortium, _args: print_kits(consortium),
    "start": start,
    "status": status,
    "stop": stop,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.cmd](Consortium(Path(args.root), port=args.port), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
