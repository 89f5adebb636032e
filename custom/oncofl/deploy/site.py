"""For a hospital's IT: configure the startup kit for this machine, then check it before starting the client.

    oncofl site configure --kit /opt/oncofl/hospital-a --ca-fingerprint <SHA-256 from the lead> \\
        --data-root /data/oncofl/prostate --cache-dir /scratch/oncofl-cache --gpus 0,1 --gpu-mem 24
    oncofl site preflight --kit /opt/oncofl/hospital-a [--connect]
    oncofl site install --kit /opt/oncofl/hospital-a [--no-deps]    # the kit's oncofl wheel (an upgraded kit)

The first installation, before ``oncofl`` exists here: ``python3 <kit>/startup/install_oncofl.py``.

``configure`` writes ``local/oncofl_site.json`` (data, cache, GPUs, workers; validated) and sizes the GPU resource
manager in ``local/resources.json`` to the GPUs given (never more than this machine has: FLARE would crash-loop).
``configure --ca-fingerprint`` checks the kit's root CA against the SHA-256 fingerprint the consortium lead gave
out of band (``oncofl provision kits`` prints it) and pins it in ``local/consortium_ca.json``.
``preflight`` prints one PASS/FAIL line per check and exits 1 if any failed:

* consortium CA: ``startup/rootCA.pem`` has the pinned fingerprint (a kit whose whole ``startup/`` comes from
  another provisioning is self-consistent: only this check catches it),
* kit integrity: every file of ``startup/`` carries a valid root-CA signature (names any file that changed),
* identity: the site certificate was issued by the kit's root CA, is in date, matches its private key and names
  this site,
* site config and data: the config validates and the data check finds every listed case readable (counts only),
* GPUs: the resource manager does not promise more GPUs than are visible,
* privacy: every scope guards both directions, removes PHI from results and bounds the update norm by a finite
  number (only an HE kit's non-default scope may leave it unbounded); logs are not streamed to the server,
* oncofl package: the oncofl installed here is the kit's (version and code hash of ``startup/oncofl_package.json``),
* ``--connect``: the server's address resolves and its port answers.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

from . import kit_install

SIGNATURE_FILE = "signature.json"
GUARD = "oncofl.privacy.SiteUpdateGuard"
PHI_FILTER = "oncofl.privacy.PHIGuardFilter"
STATS_FILTER = "oncofl.fedstats.privacy.SiteStatisticsPrivacyFilter"  # the site's floor for federated statistics
CA_PIN = "consortium_ca.json"  # local/: the root CA fingerprint the site's IT was given out of band
HE_CONTEXT = "client_context.tenseal"


class SetupError(RuntimeError):
    """A setup step cannot be done; the message says why and what to do."""


def ca_fingerprint(pem: Path) -> str:
    """The SHA-256 fingerprint of a root CA certificate (``openssl x509 -fingerprint -sha256`` style)."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import load_pem_x509_certificate

    digest = hashlib.sha256(load_pem_x509_certificate(Path(pem).read_bytes()).public_bytes(Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def _normalized(fingerprint: str) -> str:
    """A fingerprint as 64 lowercase hex digits (colons, spaces and a ``SHA256:`` prefix dropped)."""
    text = fingerprint.strip().lower().removeprefix("sha256").lstrip(":= ")
    return "".join(c for c in text if c not in ": ")


def check_root_ca(kit: Path) -> list[str]:
    """Whether the kit's root CA is the consortium's: the fingerprint pinned by ``configure`` (given out of band)."""
    pin = kit / "local" / CA_PIN
    if not pin.is_file():
        return [
            "the consortium's root CA is not pinned: run `oncofl site configure ... --ca-fingerprint <the SHA-256 "
            "fingerprint the consortium lead gave you>`"
        ]
    try:
        pinned = _normalized(json.loads(pin.read_text())["root_ca_sha256"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"local/{CA_PIN} is not readable: run `oncofl site configure ... --ca-fingerprint` again"]
    if _normalized(ca_fingerprint(kit / "startup" / "rootCA.pem")) != pinned:
        return [
            "startup/rootCA.pem is not the consortium's root CA (its fingerprint differs from the pinned one): this "
            "kit comes from another provisioning; ask the consortium lead for your kit through a trusted channel"
        ]
    return []


def pin_root_ca(kit: Path, fingerprint: str) -> Path:
    """Check the kit's root CA against ``fingerprint`` (given out of band) and pin it in ``local/``."""
    want = _normalized(fingerprint)
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise SetupError("--ca-fingerprint must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
    if _normalized(ca_fingerprint(kit / "startup" / "rootCA.pem")) != want:
        raise SetupError(
            "this kit's startup/rootCA.pem does not have the fingerprint you were given: the kit is not the "
            "consortium's (or the fingerprint was mistyped); nothing written"
        )
    path = kit / "local" / CA_PIN
    path.write_text(json.dumps({"root_ca_sha256": ca_fingerprint(kit / "startup" / "rootCA.pem")}, indent=2) + "\n")
    return path


def _kit_name(kit: Path) -> str:
    config = json.loads((kit / "startup" / "fed_client.json").read_text())
    return config["client"]["fqsn"]


def _resources_file(local: Path) -> Path:
    """The resources FLARE reads: ``resources.json`` if the site has one, else the provisioned default."""
    path = local / "resources.json"
    return path if path.is_file() else local / "resources.json.default"


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def configure(
    kit: Path,
    *,
    data_root: Path,
    cache_dir: Path,
    gpu_ids: list[int],
    gpu_mem: int = 0,
    num_workers: int = 4,
    available_gpus: int | None = None,
    ca_fingerprint: str | None = None,
) -> Path:
    """Write the site's data/GPU config into the kit; returns the config file. ``ca_fingerprint``: the root CA's
    SHA-256 fingerprint the consortium lead gave out of band; the kit is refused unless its root CA matches, and the
    fingerprint is pinned for ``preflight``."""
    from ..site_config import LOCAL_FILE_NAME, parse_site_config

    kit = Path(kit).resolve()
    if not (kit / "startup" / "fed_client.json").is_file():
        raise SetupError(
            f"{kit} is not a hospital startup kit (no startup/fed_client.json): point --kit at the unpacked kit folder"
        )
    site = _kit_name(kit)
    if ca_fingerprint is not None:
        pin_root_ca(kit, ca_fingerprint)
    available = visible_gpus() if available_gpus is None else available_gpus
    wrong = [g for g in gpu_ids if g < 0 or g >= available]
    if wrong:
        raise SetupError(
            f"GPU ids {wrong} are not visible on this machine ({available} CUDA device(s)); list only "
            f"GPUs that `nvidia-smi` shows, or `--gpus none` for a CPU-only site"
        )
    config = {
        "site_name": site,
        "data_root": str(Path(data_root).resolve()),
        "cache_dir": str(Path(cache_dir).resolve()),
        "gpu_ids": list(gpu_ids),
        "num_workers": num_workers,
    }
    Path(config["cache_dir"]).mkdir(parents=True, exist_ok=True)
    path = kit / "local" / LOCAL_FILE_NAME
    parse_site_config(config, site_name=site, source=path)  # refuse a bad config before writing it
    path.write_text(json.dumps(config, indent=2) + "\n")

    _offer_gpus(kit / "local", gpu_ids, gpu_mem)
    return path


def _offer_gpus(local: Path, gpu_ids: list[int], gpu_mem: int) -> None:
    """Write ``local/resources.json`` with oncofl.site_gpus' resource manager and consumer: FLARE's GPU manager
    offers the host's first N GPUs; ours offers the ones the site names."""
    resources = json.loads(_resources_file(local).read_text())
    for component in resources.get("components", []):
        if component.get("id") == "resource_manager":
            expiration = component.get("args", {}).get("expiration_period", 300)
            component["path"] = "oncofl.site_gpus.SiteGPUResourceManager"
            component["args"] = {
                "gpu_ids": list(gpu_ids),
                "mem_per_gpu_in_GiB": gpu_mem if gpu_ids else 0,
                "expiration_period": expiration,
            }
        elif component.get("id") == "resource_consumer":
            component["path"], component["args"] = "oncofl.site_gpus.SiteGPUConsumer", {}
    (local / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------- preflight
def check_signatures(startup: Path) -> list[str]:
    """Files of ``startup/`` whose signature is missing or wrong (empty: intact)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.x509 import load_pem_x509_certificate

    signatures_path = startup / SIGNATURE_FILE
    if not signatures_path.is_file():
        return [f"{SIGNATURE_FILE} (missing: this kit was not signed at provisioning)"]
    signatures = json.loads(signatures_path.read_text())
    public_key = load_pem_x509_certificate((startup / "rootCA.pem").read_bytes()).public_key()
    bad = []
    files = sorted(p.name for p in startup.iterdir() if p.is_file() and p.name != SIGNATURE_FILE)
    for name in files:
        if name not in signatures:
            bad.append(f"{name} (not part of the issued kit)")
            continue
        try:
            public_key.verify(
                base64.b64decode(signatures[name]),
                (startup / name).read_bytes(),
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            bad.append(f"{name} (changed since provisioning)")
    bad += [f"{name} (missing)" for name in sorted(set(signatures) - set(files)) if not (startup / name).is_dir()]
    return bad


def check_identity(startup: Path, expected_name: str) -> list[str]:
    """Problems with the site certificate: issuer, validity, key pair, name."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_pem_x509_certificate
    from cryptography.x509.oid import NameOID

    root = load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
    cert = load_pem_x509_certificate((startup / "client.crt").read_bytes())
    problems = []
    try:
        cert.verify_directly_issued_by(root)
    except Exception:
        problems.append("client.crt was not issued by this kit's rootCA.pem (a certificate from another provisioning?)")
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(
            f"client.crt is valid {cert.not_valid_before_utc:%Y-%m-%d}..{cert.not_valid_after_utc:%Y-%m-%d}"
        )
    key = serialization.load_pem_private_key((startup / "client.key").read_bytes(), password=None)
    raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        problems.append("client.key does not belong to client.crt")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [expected_name]:
        problems.append(f"client.crt names {names}, the kit runs as '{expected_name}'")
    return problems


def _bound_problem(scope_name: str, guard: dict, may_be_unbounded: bool) -> str | None:
    """What is wrong with one SiteUpdateGuard's update bound (None: a finite positive number, or allowed null)."""
    bound = guard.get("args", {}).get("max_update_norm")
    if bound is None:
        if may_be_unbounded:
            return None
        return (
            f"the scope '{scope_name}' does not bound the update norm (max_update_norm null); only an HE scope in a "
            "kit with an HE context may, and never the default scope"
        )
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (math.isfinite(bound) and bound > 0):
        return f"the scope '{scope_name}' has max_update_norm {bound!r}: it must be a finite positive number"
    return None


def check_privacy(local: Path, he_kit: bool = False) -> list[str]:
    """Problems with the site's privacy policy: every scope (a job may name any) has the update guard in both chains,
    the statistics filter with the site's floor and the PHI filter on results; every guard bounds the update norm,
    except in a non-default scope of a kit that can run HE jobs (``he_kit``: an encrypted global model's update norm
    cannot be measured)."""
    path = local / "privacy.json"
    if not path.is_file():
        return [
            "local/privacy.json missing: updates would leave without the site's policy (copy it from the kit "
            "template: oncofl/deploy/site_templates/privacy.json)"
        ]
    policy = json.loads(path.read_text())
    scopes = {s.get("name"): s for s in policy.get("scopes", [])}
    default = scopes.get(policy.get("default_scope"))
    if default is None:
        return ["privacy.json has no default_scope: a job that names no scope would run unfiltered"]
    problems = []
    for name, scope in scopes.items():
        for chain in ("task_data_filters", "task_result_filters"):
            guards = [f for f in scope.get(chain, []) if f.get("path") == GUARD]
            if not guards:
                problems.append(f"the scope '{name}' lacks {GUARD} in {chain}")
            unbounded_ok = he_kit and scope is not default
            problems += [p for p in (_bound_problem(name, g, unbounded_ok) for g in guards) if p]
        if not any(f.get("path") == PHI_FILTER for f in scope.get("task_result_filters", [])):
            problems.append(f"the scope '{name}' lacks {PHI_FILTER} in task_result_filters")
        floors = [f.get("args", {}).get("min_count") for f in scope.get("task_result_filters", [])
                  if f.get("path") == STATS_FILTER]  # fmt: skip
        if not any(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in floors):
            problems.append(f"the scope '{name}' lacks {STATS_FILTER} with a min_count of at least 1")
    return list(dict.fromkeys(problems))


def check_gpus(resources: dict, config) -> tuple[list[str], str]:
    """Problems with the GPUs the kit offers to jobs against those visible here; and the detail."""
    manager = next((c["args"] for c in resources.get("components", []) if c.get("id") == "resource_manager"), {})
    offered = manager.get("gpu_ids")  # oncofl.site_gpus.SiteGPUResourceManager names them; FLARE's counts them
    promised, available = (len(offered) if offered is not None else int(manager.get("num_of_gpus", 0))), visible_gpus()
    problems = []
    if offered is not None and config is not None and sorted(offered) != sorted(config.gpu_ids):
        problems.append(
            f"resources.json offers GPUs {sorted(offered)} to jobs but oncofl_site.json names "
            f"{sorted(config.gpu_ids)}; run `oncofl site configure --gpus ...`"
        )
    if promised > available:
        problems.append(
            f"resources.json promises {promised} GPU(s), {available} visible: the client would "
            f"crash-loop; run `oncofl site configure --gpus ...`"
        )
    if config is not None and any(g >= available for g in config.gpu_ids):
        problems.append(f"oncofl_site.json gpu_ids {list(config.gpu_ids)} but {available} visible")
    return problems, f"{promised} GPU(s) offered to jobs, {available} visible"


def check_package(startup: Path) -> tuple[list[str], str]:
    """Problems with the oncofl installed here against the kit's package manifest; and the detail when none."""
    from ..provenance import describe, installed

    try:
        manifest = kit_install.verify(startup)
    except (kit_install.KitPackageError, KeyError, ValueError) as e:
        return [str(e)], ""
    want, have = (manifest["version"], manifest["code_sha256"]), installed()
    if (have["version"], have["code_sha256"]) != want:
        return [
            f"{describe(have['version'], have['code_sha256'])} is installed, the kit carries {describe(*want)}: jobs "
            "would be refused; run `oncofl site install --kit <kit>`"
        ], ""
    return [], f"{describe(*want)} installed, as in the kit"


def install_package(kit: Path, python: str = sys.executable, deps: bool = True, target: str | None = None) -> dict:
    """Install the kit's oncofl wheel (after its requirements) into ``python``'s environment; the kit's signature and
    the files' SHA-256 are checked first."""
    startup = Path(kit).resolve() / "startup"
    bad = check_signatures(startup)
    if bad:
        raise SetupError(f"the kit's startup/ does not carry the consortium's signature: {'; '.join(bad)}")
    try:
        return kit_install.install(startup, python, deps=deps, target=target)
    except kit_install.KitPackageError as e:
        raise SetupError(str(e)) from e


def preflight(kit: Path, connect: bool = False, decode: bool = False) -> list[tuple[str, bool, str]]:
    """Run every check; returns (check, passed, detail) rows. Details stay on this machine."""
    from ..datacheck import check_site
    from ..site_config import LOCAL_FILE_NAME, load_site_config

    kit = Path(kit).resolve()
    startup, local = kit / "startup", kit / "local"
    rows: list[tuple[str, bool, str]] = []

    def row(name: str, problems: list[str], ok_detail: str = "") -> None:
        rows.append((name, not problems, "; ".join(problems) if problems else ok_detail))

    if not (startup / "fed_client.json").is_file():
        return [("kit layout", False, f"{kit} has no startup/fed_client.json: point --kit at the unpacked kit")]
    site = _kit_name(kit)
    row("consortium CA", check_root_ca(kit), "startup/rootCA.pem has the fingerprint pinned at configure")
    row("kit integrity", check_signatures(startup), "every startup file carries the root CA's signature")
    row("site identity", check_identity(startup, site), f"certificate for '{site}' issued by the consortium's CA")
    try:
        config = load_site_config(local / LOCAL_FILE_NAME, site_name=site)
    except Exception as e:
        row("site config", [str(e)])
        config = None
    else:
        row("site config", [], f"data {config.data_root}, cache {config.cache_dir}, GPUs {list(config.gpu_ids)}")
    if config is not None:
        report = check_site(config, decode=decode)
        problems = [f"{len(report.problems)} unreadable case(s): `oncofl check-site` lists them with the fix"]
        row("site data", [] if report.ok else problems, f"cases {report.summary()['cases']}")
    resources = json.loads(_resources_file(local).read_text())
    row("GPUs", *check_gpus(resources, config))
    privacy = check_privacy(local, he_kit=(startup / HE_CONTEXT).is_file())
    if resources.get("allow_log_streaming", True):
        privacy.append(
            "resources.json allows log streaming: local error logs (which name files) would reach the "
            'server; set "allow_log_streaming": false'
        )
    row("privacy policy", privacy, "updates bounded and cleaned by the site; logs stay local")
    package_problems, package_detail = check_package(startup)
    row("oncofl package", package_problems, package_detail)
    if connect:
        row("server reachable", *check_connection(startup))
    return rows


def check_connection(startup: Path) -> tuple[list[str], str]:
    """Whether the server's address (from ``fed_client.json``) resolves and its port answers; and the address."""
    target = json.loads((startup / "fed_client.json").read_text())["servers"][0]["service"]["target"]
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        return [f"{target}: {e} (firewall? DNS? is the server up?)"], ""
    return [], target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("configure", help="write this site's data/GPU settings into its kit")
    p.add_argument("--kit", required=True)
    p.add_argument("--data-root", required=True, help="folder with datalist.json and the site's images")
    p.add_argument("--cache-dir", required=True, help="local folder for preprocessed data")
    p.add_argument("--gpus", default="none", help="GPU ids for FL jobs, e.g. 0,1; 'none' for CPU only")
    p.add_argument("--gpu-mem", type=int, default=0, help="GiB per GPU")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--ca-fingerprint",
        required=True,
        help="the consortium root CA's SHA-256 fingerprint, as the lead gave it to you (not from the kit itself)",
    )
    p = sub.add_parser("preflight", help="check the kit, config, data, GPUs and privacy policy")
    p.add_argument("--kit", required=True)
    p.add_argument("--connect", action="store_true", help="also check that the server's port answers")
    p.add_argument("--decode", action="store_true", help="decode every image in the data check (slower)")
    p = sub.add_parser("install", help="install the kit's oncofl wheel (checked against the kit) into this env")
    p.add_argument("--kit", required=True)
    p.add_argument("--python", default=sys.executable, help="the environment to install into (its python)")
    p.add_argument("--no-deps", action="store_true", help="the pinned requirements are installed already")
    p.add_argument("--target", default=None, help="install into this folder instead (pip --target)")
    return parser


def _configure_command(args: argparse.Namespace) -> int:
    gpus = [] if args.gpus.strip().lower() in ("", "none") else [int(g) for g in args.gpus.split(",")]
    path = configure(
        Path(args.kit),
        data_root=Path(args.data_root),
        cache_dir=Path(args.cache_dir),
        gpu_ids=gpus,
        gpu_mem=args.gpu_mem,
        num_workers=args.workers,
        ca_fingerprint=args.ca_fingerprint,
    )
    print(f"wrote {path} and local/resources.json ({len(gpus)} GPU(s)); next: oncofl site preflight")
    return 0


def _install_command(args: argparse.Namespace) -> int:
    manifest = install_package(Path(args.kit), args.python, deps=not args.no_deps, target=args.target)
    print(f"installed oncofl {manifest['version']} from the kit; next: oncofl site preflight")
    return 0


def _print_preflight(rows: list[tuple[str, bool, str]]) -> int:
    """One PASS/FAIL line per check; 1 when any failed."""
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name:17} {detail}")
    failed = [name for name, ok, _ in rows if not ok]
    print("\nready: start the client with startup/start.sh" if not failed else f"\n{len(failed)} check(s) failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "configure":
            return _configure_command(args)
        if args.cmd == "install":
            return _install_command(args)
        rows = preflight(Path(args.kit), connect=args.connect, decode=args.decode)
    except (SetupError, subprocess.CalledProcessError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return _print_preflight(rows)


if __name__ == "__main__":
    sys.exit(main())
