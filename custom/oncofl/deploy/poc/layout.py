"""The POC's definition and what ``prepare`` writes: its project (``poc_project/project.yml``, given the POC's port),
and each hospital kit's ``local/`` (data config, privacy policy, resources with its GPUs).

The project and each hospital's data config come with the package (``oncofl/deploy/poc_project/``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..builders import site_privacy, site_resources

POC_PROJECT = Path(__file__).resolve().parent.parent / "poc_project"
PROJECT_FILE = POC_PROJECT / "project.yml"
SITE_CONFIGS = POC_PROJECT / "site_configs"
PROJECT = "oncofl_poc"
SERVER = "server"
SITES = ("hospital-a", "hospital-b", "hospital-c")
PROJECT_ADMIN = "admin@consortium.org"
LEAD = "lead@consortium.org"
ORG_ADMIN = "itadmin@hospital-a.org"
DEFAULT_PORT = 8102
DEFAULT_ROOT = Path("poc") / "workspace"
GITIGNORE = "# oncofl POC workspace: keys and kits, never committed\n*\n"


def project_text(port: int, he: bool) -> str:
    """The POC's ``project.yml`` with the server on ``port``; ``he``: with FLARE's HEBuilder (CKKS contexts in the
    kits), before the signature builder, which then signs the context files too."""
    text = PROJECT_FILE.read_text()
    text = re.sub(r"(fed_learn_port|admin_port): \d+", rf"\g<1>: {port}", text)
    if he:
        signature = "  - path: nvflare.lighter.impl.signature.SignatureBuilder"
        text = text.replace(signature, "  - path: nvflare.lighter.impl.he.HEBuilder\n" + signature)
    return text


def site_config(site: str, data: Path, gpu_ids: list[int]) -> dict:
    """A POC hospital's ``oncofl_site.json``: the packaged config, its folders resolved against ``data``."""
    config = json.loads((SITE_CONFIGS / f"{site}.json").read_text())
    for key in ("data_root", "cache_dir"):
        config[key] = str((data / config[key]).resolve())
    config["gpu_ids"] = list(gpu_ids)
    return config


def write_site_local(local: Path, config: dict, he: bool) -> None:
    """Write a hospital kit's ``local/``: its data config, and the same site policy as a provisioned hospital kit --
    its privacy scope guards every update that leaves, and its logs stay local (no log streaming to the server)."""
    gpu_ids = config["gpu_ids"]
    (local / "oncofl_site.json").write_text(json.dumps(config, indent=2) + "\n")
    (local / "privacy.json").write_text(json.dumps(site_privacy(he), indent=2) + "\n")
    defaults = json.loads((local / "resources.json.default").read_text())
    resources = site_resources(defaults, len(gpu_ids), 16 if gpu_ids else 0, drills=True)
    (local / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")
