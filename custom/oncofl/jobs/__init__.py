"""The jobs: one definition per job over the shared job builder (:mod:`oncofl.jobs.builder`).

A definition writes a job folder that carries settings only (``meta.json`` and the two app configs); the code comes
from the oncofl installed at each site and at the server. ``oncofl job export <name>`` or ``python jobs/<name>.py``.
The jobs there are, with their tasks and demo data: :mod:`oncofl.catalog`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..catalog import JOBS, by_job

JOB_NAMES = tuple(job.name for job in JOBS)  # the catalog's jobs, in its order
# A job without code of its own may only build classes on its site's ``class_allow_list`` (FLARE 2.9). These are the
# ones our jobs build beyond FLARE's default list; every site, the server, the POC and the simulator allow them.
JOB_COMPONENTS = (
    "oncofl.executor.OncoFLExecutor",
    "oncofl.provenance.ProvenanceCheck",
    "oncofl.privacy.PHIGuardFilter",
    "oncofl.privacy.SiteUpdateGuard",  # a job may also apply the sites' own guard (stricter, never weaker)
    "oncofl.aggregation.RobustAggregator",
    "oncofl.compression.UpdateQuantizer",  # --compression: a site's updates quantized, decoded at the server
    "oncofl.compression.UpdateDequantizer",
    "oncofl.server.",
    "oncofl.tasks.",
    "oncofl.he.HECrossSiteModelEvalFixed",
    "oncofl.fedstats.",  # the federated statistics jobs (statistics, cleanser, filter, controller, writer)
    "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
    "nvflare.app_common.workflows.scatter_and_gather_scaffold.ScatterAndGatherScaffold",
    "torch.optim.Adam",  # FedOpt's server optimizer
    "torch.optim.SGD",
)
# fault drills (a site's updates broken on purpose): allowed in the simulator and the POC rehearsal, never in a
# hospital's kit
DRILL_COMPONENTS = ("oncofl.faults.UpdateFaultFilter",)


def class_allow_list(base: list[str] | tuple[str, ...] | None = None, drills: bool = False) -> list[str]:
    """``base`` (a site's provisioned list; default: FLARE's built-in one) plus what our jobs build."""
    if base is None:
        from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST as base
    extra = [*JOB_COMPONENTS, *(DRILL_COMPONENTS if drills else ())]
    return [*base, *(c for c in extra if c not in base)]


def definition(name: str) -> ModuleType:
    """The module defining job ``name`` (it has ``export(out_dir, **options)`` and ``main(argv)``)."""
    return by_job(name).definition()


def job_folder(job: str | Path, build_dir: str | Path) -> Path:
    """A job folder: ``job`` itself when it is one (holds ``meta.json``), else the job of that name freshly written
    into ``build_dir`` by the installed definition."""
    path = Path(job)
    if (path / "meta.json").is_file():
        return path.resolve()
    if str(job) in JOB_NAMES:
        return definition(str(job)).export(Path(build_dir)).resolve()
    raise ValueError(f"'{job}' is neither a job folder (no meta.json) nor a job name ({', '.join(JOB_NAMES)})")
