"""Provisioning builders for the oncofl consortium (listed in ``provisioning/project.yml``; ``oncofl provision``).

:class:`SiteTemplateBuilder` puts the consortium's site templates (``site_templates/``) into every client kit's
``local/`` and the consortium's authorization policy into the server's; :class:`PackageBuilder` puts the oncofl wheel
the lead built (with the pinned requirements, their SHA-256 and an installer) into every kit's ``startup/``;
:class:`SignStartupBuilder` signs every kit's ``startup/`` folder with the project's root CA so a changed file -- the
wheel included -- is caught, by FLARE itself when the participant starts and by ``oncofl site preflight`` before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nvflare.lighter.constants import CtxKey, PropKey, ProvFileName
from nvflare.lighter.spec import Builder, Project, ProvisionContext
from nvflare.lighter.utils import sign_folders

from ..jobs import class_allow_list
from . import kit_install

TEMPLATES = Path(__file__).resolve().parent / "site_templates"
REQUIREMENTS = "oncofl-requirements.txt"
INSTALLER = "install_oncofl.py"


GUARD = "oncofl.privacy.SiteUpdateGuard"
HE_CONTEXT = "client_context.tenseal"  # FLARE's HEBuilder puts it into a hospital kit's startup/


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _template(name: str, template_dir: Path = TEMPLATES) -> dict:
    return json.loads((template_dir / name).read_text())


def _bounded(scope: dict) -> bool:
    """Whether every SiteUpdateGuard of ``scope`` has an update bound."""
    guards = [f for chain in ("task_data_filters", "task_result_filters") for f in scope.get(chain, [])]
    return all(f.get("args", {}).get("max_update_norm") is not None for f in guards if f.get("path") == GUARD)


def site_privacy(he: bool, template_dir: Path = TEMPLATES) -> dict:
    """A hospital's ``local/privacy.json``: the template's scopes; a scope without a finite update bound (the HE
    scope: an encrypted global model's update norm cannot be measured) only in a kit that can run HE jobs."""
    policy = _template("privacy.json", template_dir)
    policy["scopes"] = [s for s in policy["scopes"] if he or _bounded(s)]
    return policy


def site_resources(defaults: dict, num_gpus: int, gpu_mem: int, drills: bool = False, template_dir=TEMPLATES) -> dict:
    """A hospital's ``local/resources.json``: the provisioned ``defaults`` (FLARE's class allow-list included) with
    the template's settings (no log streaming to the server, no log streamer) and a GPU manager of ``num_gpus``."""
    resources = dict(defaults)
    template = _template("resources.json", template_dir)
    for component in template["components"]:
        if component["id"] == "resource_manager":
            component["args"]["num_of_gpus"] = int(num_gpus)
            component["args"]["mem_per_gpu_in_GiB"] = int(gpu_mem)
    resources.update(template)
    resources["class_allow_list"] = class_allow_list(defaults.get("class_allow_list"), drills=drills)
    return resources


class SiteTemplateBuilder(Builder):
    """Every hospital kit gets ``privacy.json`` (the scope that bounds and cleans outgoing updates, default for all
    jobs), ``authorization.json`` (who may submit jobs; nobody may submit jobs that carry code unless
    ``allow_byoc`` names the role), ``resources.json`` (GPU resource manager sized from the participant's
    ``capacity``; no log streaming to the server, since local error messages name the site's files) and
    ``oncofl_site.json.sample`` (the data config the site's IT fills in with ``oncofl site configure``). The server
    gets the same authorization policy and its job/snapshot storage under ``server_storage`` instead of ``/tmp``.

    The arguments come from the builder's ``args`` in ``project.yml``.

    Args:
        template_dir: the folder of site templates; empty (default): the package's ``site_templates/``.
        server_storage: the server's storage folder: its job store goes to ``jobs-storage/`` and its snapshots to
            ``snapshot-storage/`` under it (default ``/var/lib/oncofl/flare``).
        allow_byoc: roles that may submit jobs carrying their own code (research mode; none by default, so every site
            runs only its installed, reviewed oncofl -- see docs/security.md before granting it).
    """

    def __init__(
        self, template_dir: str = "", server_storage: str = "/var/lib/oncofl/flare", allow_byoc: list[str] | None = None
    ):
        self.template_dir = Path(template_dir) if template_dir else TEMPLATES
        self.server_storage = server_storage
        self.allow_byoc = list(allow_byoc or [])

    def _template(self, name: str) -> dict:
        return _template(name, self.template_dir)

    def _authorization(self) -> dict:
        authorization = self._template("authorization.json")
        for role, rights in authorization["permissions"].items():
            if isinstance(rights, dict):
                rights["byoc"] = "any" if role in self.allow_byoc else "none"
        return authorization

    def build(self, project: Project, ctx: ProvisionContext):
        authorization = self._authorization()
        for client in project.get_clients():
            local = ctx.get_local_dir(client)
            he = os.path.isfile(os.path.join(ctx.get_kit_dir(client), HE_CONTEXT))  # HEBuilder runs before us
            _write_json(os.path.join(local, "privacy.json"), site_privacy(he, self.template_dir))
            _write_json(os.path.join(local, "authorization.json"), authorization)
            sample = self._template("oncofl_site.json")
            sample["site_name"] = client.name
            _write_json(os.path.join(local, "oncofl_site.json.sample"), sample)
            capacity = client.get_prop(PropKey.CAPACITY) or {}
            _write_json(os.path.join(local, "resources.json"), self._client_resources(local, capacity))
        server = project.get_server()
        if server:
            local = ctx.get_local_dir(server)
            _write_json(os.path.join(local, "authorization.json"), authorization)
            _write_json(os.path.join(local, "resources.json"), self._server_resources(local))

    def _client_resources(self, local: str, capacity: dict) -> dict:
        """The provisioned defaults (FLARE's current class allow-list included) with the template's settings."""
        with open(os.path.join(local, "resources.json.default")) as f:
            defaults = json.load(f)
        gpus, mem = int(capacity.get(PropKey.NUM_GPUS, 0)), int(capacity.get(PropKey.GPU_MEM, 0))
        return site_resources(defaults, gpus, mem, template_dir=self.template_dir)

    def _server_resources(self, local: str) -> dict:
        with open(os.path.join(local, "resources.json.default")) as f:
            resources = json.load(f)
        storage = resources["snapshot_persistor"]["args"]["storage"]["args"]
        storage["root_dir"] = os.path.join(self.server_storage, "snapshot-storage")
        for component in resources["components"]:
            if component["id"] == "job_manager":
                component["args"]["uri_root"] = os.path.join(self.server_storage, "jobs-storage")
        resources["class_allow_list"] = class_allow_list(resources.get("class_allow_list"))
        return resources


class PackageBuilder(Builder):
    """Every kit's ``startup/`` gets the consortium's oncofl: the wheel, the pinned requirements, the installer
    (``install_oncofl.py``, standard library only) and ``oncofl_package.json`` with their SHA-256, the version and
    the hash of the package's code (what ``oncofl site preflight`` compares with the installed oncofl). Must come
    before the SignStartupBuilder, which then signs them with the kit.

    The arguments come from the builder's ``args`` in ``project.yml``; ``oncofl provision`` builds the wheel from the
    checkout and fills them in.

    Args:
        wheel: path of the oncofl wheel file (its file name gives the version); the build fails when it is missing.
        requirements: path of the wheel's pinned requirements file, copied into each kit as
            ``oncofl-requirements.txt``; the build fails when it is missing.
    """

    def __init__(self, wheel: str = "", requirements: str = ""):
        self.wheel = Path(wheel) if wheel else None
        self.requirements = Path(requirements) if requirements else None

    def build(self, project: Project, ctx: ProvisionContext):
        if self.wheel is None or not self.wheel.is_file():
            raise RuntimeError(f"PackageBuilder: no oncofl wheel at '{self.wheel}' (oncofl provision builds one)")
        if self.requirements is None or not self.requirements.is_file():
            raise RuntimeError(f"PackageBuilder: no requirements file at '{self.requirements}'")
        name = self.wheel.name
        version = name.split("-")[1]
        manifest = {
            "wheel": name,
            "wheel_sha256": kit_install.sha256_file(self.wheel),
            "requirements": REQUIREMENTS,
            "requirements_sha256": kit_install.sha256_file(self.requirements),
            "version": version,
            "code_sha256": kit_install.wheel_code_hash(self.wheel),
        }
        for participant in [project.get_server(), *project.get_clients()]:  # who runs oncofl; admins do not
            if participant is None:
                continue
            startup = Path(ctx.get_kit_dir(participant))
            shutil.copy2(self.wheel, startup / name)
            shutil.copy2(self.requirements, startup / REQUIREMENTS)
            shutil.copy2(kit_install.__file__, startup / INSTALLER)
            _write_json(str(startup / kit_install.MANIFEST), manifest)


class SignStartupBuilder(Builder):
    """Signs each participant's ``startup/`` folder (certificates, keys, endpoints, scripts) with the root CA key,
    as FLARE does for HE kits. With ``startup/signature.json`` present, a FLARE participant refuses to start when
    its startup configuration, certificate or key changed; ``local/`` stays editable by the site. Must come after
    the CertBuilder."""

    def build(self, project: Project, ctx: ProvisionContext):
        root_key = ctx.get(CtxKey.ROOT_PRI_KEY)
        if not root_key:
            raise RuntimeError("SignStartupBuilder needs the root CA key: list it after CertBuilder in project.yml")
        for participant in project.get_all_participants():
            sign_folders(ctx.get_kit_dir(participant), root_key, signature_file=ProvFileName.SIGNATURE_JSON)
