"""The shape every oncofl job shares: scatter-and-gather, best-model selection, cross-site evaluation.

FL touchpoints: (1) the server scatters the global model and gathers updates (ScatterAndGather), combined by
:class:`oncofl.aggregation.RobustAggregator` (FedAvg's step-weighted mean by default, or coordinate-wise median /
trimmed mean, with non-finite and outlier updates refused and norms bounded; not with ``--he`` or SCAFFOLD, which
refuse these options), (2) it keeps the best global model by the sites' validation metric, over the sites whose
updates were aggregated (AggregatedModelSelector), (3) it then runs cross-site evaluation of the global and every
local model (CrossSiteModelEval). Hyper-parameters live in the job definitions and travel with the job; data paths
and GPUs stay in each site's own config.

The algorithm is a job option (``--algorithm`` of every job definition, :data:`ALGORITHM_OPTIONS`):

* ``fedavg``   -- FedAvg;
* ``fedprox``  -- FedProx, proximal term ``--fedprox-mu`` in each site's loss;
* ``fedopt``   -- FedOpt: the server applies Adam (``--server-lr``) to the aggregated update
  (FLARE's PTFedOptModelShareableGenerator); ``--server-optimizer sgd --server-lr 1 --server-momentum 0.9`` is
  FedAvgM (server momentum);
* ``scaffold`` -- SCAFFOLD: FLARE's ScatterAndGatherScaffold with control variates at the sites;
* ``fedbn``    -- FedBN: normalization state stays at each site (personalized models; cross-site evaluation
  reports each model as sent and ``*_personalized``).

``--dp-epsilon E`` adds sample-level DP-SGD at every site (Opacus) with a job budget of E (the noise is calibrated so
the planned rounds spend it; the server stops training if a round would exceed it). ``--privacy-filter percentile``
or ``svt`` adds FLARE's lighter update filters. ``--compression blockwise8`` (or ``float16``, ``bfloat16``,
``float4``, ``normfloat4``) quantizes the sites' updates on their way out and decodes them at the server before the
aggregator (:mod:`oncofl.compression`). ``--he`` encrypts every model a site sends (CKKS, FLARE's HE filters;
the server aggregates ciphertexts) and needs HE-provisioned kits (``oncofl poc prepare --he``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DataKind
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import (
    InTimeAccumulateWeightedAggregator,
)
from nvflare.app_common.app_constant import AlgorithmConstants, AppConstants
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
from nvflare.app_common.filters.svt_privacy import SVTPrivacy
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import (
    FullModelShareableGenerator,
)
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_common.workflows.scatter_and_gather_scaffold import ScatterAndGatherScaffold
from nvflare.app_opt.pt.fedopt import PTFedOptModelShareableGenerator
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from oncofl.aggregation import RobustAggregator
from oncofl.algorithms import ALGORITHMS, fedbn_refusal
from oncofl.constants import CLIENT_TASKS, COMPRESSIONS
from oncofl.executor import OncoFLExecutor
from oncofl.faults import UpdateFaultFilter
from oncofl.privacy import PHIGuardFilter
from oncofl.provenance import ProvenanceCheck, installed
from oncofl.server import (
    AggregatedModelSelector,
    ParticipationMonitor,
    PrivacyBudgetScatterAndGather,
    SiteErrorReporter,
)
from oncofl.site.settings import TrainSettings
from oncofl.tasks import DEFAULT_INIT_SEED, get_task

PACKAGE = Path(__file__).resolve().parents[1]  # the installed oncofl package
# CLIENT_TASKS: every task a site's executor answers. FLARE 2.9 files a job's filters under each task name as written
# and looks them up by the exact name ("*" is not a wildcard there), so filters that must see every result name these
TASK_REQUEST_INTERVAL = 0.5  # seconds; see export()
# provisioned sites run HE jobs under this privacy.json scope: their guard cannot measure the norm of an update that
# started from an encrypted global model (see oncofl.privacy.SiteUpdateGuard); the other checks stay
HE_SCOPE = "oncofl-he"

# Options every job definition takes (command line: --algorithm, --fedprox-mu, ...), with their defaults.
ALGORITHM_OPTIONS: dict[str, Any] = {
    "algorithm": "fedavg",
    "fedprox_mu": 0.01,
    "server_lr": 0.01,
    "server_optimizer": "adam",  # fedopt's server step: "adam", or "sgd" with --server-momentum (FedAvgM)
    "server_momentum": 0.9,
    "aggregation": "mean",
    "trim_fraction": 0.2,
    "max_update_norm": 0.0,
    "reject_norm_factor": 10.0,
    "dp_epsilon": 0.0,
    "dp_delta": 1e-5,
    "dp_max_grad_norm": 1.0,
    "dp_noise_multiplier": 0.0,  # 0: calibrated so the planned rounds spend exactly --dp-epsilon
    "privacy_filter": "",  # FLARE's lighter update filters: "percentile" (share the largest 10 %) or "svt"
    # the sites' training updates quantized on their way out and decoded at the server before aggregation
    # (oncofl.compression): "float16", "bfloat16", "blockwise8", "float4" or "normfloat4"; "": sent as float32
    "compression": "",
    # what a site sends after training: "full" (its weights), "diff" (its weights minus the global model it started
    # from) or "auto": diff with a privacy filter or compression (they quantize or cut the update, not the weights)
    "exchange": "auto",
    "he": False,  # homomorphic encryption (CKKS): the server aggregates ciphertexts; needs HE-provisioned kits
    "lr_schedule": "constant",  # the sites' learning rate over the rounds: "constant" or "cosine" (to ~0 at the end)
    "optimizer_state": "keep",  # the sites' Adam state: "keep" (carried across rounds) or "reset" (fresh each round)
    "weight_decay": 0.0,  # the sites' decoupled weight decay (AdamW); 0: none
    "init_seed": DEFAULT_INIT_SEED,  # the initial weights: every run of a job starts from the same model
    # seconds after a round starts at which it closes without the sites that have not answered (recorded as timed
    # out in participation.json); 0: a round waits for every site that is alive, however slow
    "round_deadline": 0,
    # GPUs each site's resource manager reserves for the job (FLARE resource_spec "@default"; 0: none, the job runs
    # on whatever the site config names). Sites offer their configured gpu_ids (oncofl.site_gpus)
    "gpus_per_site": 0,
    "gpu_mem_gib": 8,
}
# a round without a deadline waits for every live site this long at most after min_clients answered (FLARE ends the
# wait earlier when the only sites left are disconnected)
WAIT_FOR_EVERY_SITE = 7 * 24 * 3600
SERVER_OPTIMIZERS = ("adam", "sgd")
PRIVACY_FILTERS = {
    "percentile": lambda: PercentilePrivacy(percentile=90, gamma=0.01),
    "svt": lambda: SVTPrivacy(fraction=0.1, epsilon=0.1, noise_var=0.1, gamma=1e-5),
}


def build_fedavg_job(
    name: str,
    *,
    task: str,
    num_rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    min_clients: int = 2,
    preprocess: dict[str, Any] | None = None,
    network: dict[str, Any] | None = None,
    train_timeout: int = 0,
    submit_model_timeout: int = 600,
    validation_timeout: int = 1800,
    fault: dict[str, Any] | None = None,
    **options: Any,
) -> FedJob:
    """One job for one task of :mod:`oncofl.tasks`; the server's model is the task's network.

    Args:
        name: the job's name (its folder).
        task: the :mod:`oncofl.tasks` name.
        num_rounds: federated rounds.
        local_epochs: each site's epochs per round.
        batch_size: each site's batch size.
        learning_rate: each site's base learning rate.
        min_clients: sites a round needs.
        preprocess: overrides of the task's preprocessing parameters.
        network: arguments of the task's network builder.
        train_timeout: seconds FLARE waits for a site's update (0: no limit; ``round_deadline`` sets both).
        submit_model_timeout: cross-site evaluation: seconds to wait for a site's local model.
        validation_timeout: cross-site evaluation: seconds to wait for a site's scores.
        fault: arguments of :class:`oncofl.faults.UpdateFaultFilter` (drills only).
        options: see :data:`ALGORITHM_OPTIONS`.
    """
    opts = _job_options(options)
    if opts["init_seed"] != DEFAULT_INIT_SEED:
        network = {**(network or {}), "init_seed": int(opts["init_seed"])}
    dp = _dp_settings(opts, num_rounds)
    spec = get_task(task)
    if opts["algorithm"] == "fedbn" and (
        refusal := fedbn_refusal(spec.build_network(**(network or {})), spec.local_state)
    ):
        raise ValueError(f"task '{task}': {refusal}")
    job = _new_job(name, min_clients, opts)
    job.to_server(spec.build_network(**(network or {})), id="model")
    _add_server(job, spec.key_metric, opts)
    workflow = _scatter_and_gather(opts, dp, train_timeout, min_clients=min_clients, num_rounds=num_rounds)
    job.to_server(workflow, id="scatter_and_gather")
    job.to_server(_cross_site_eval(bool(opts["he"]), submit_model_timeout, validation_timeout), id="cross_site_eval")
    site = dict(task=task, local_epochs=local_epochs, batch_size=batch_size, learning_rate=learning_rate)
    job.to_clients(
        _executor(opts, dp, preprocess=preprocess, network=network, **site), id="executor", tasks=list(CLIENT_TASKS)
    )
    _add_client_filters(job, opts, fault)
    job.to_clients(
        ConvertToFedEvent(events_to_convert=["analytix_log_stats"], fed_event_prefix="fed."), id="event_to_fed"
    )
    return job


# the job options that are site settings of the same name (oncofl.site.settings.TrainSettings): passed as they are
_SITE_OPTIONS = tuple(k for k in ALGORITHM_OPTIONS if k in {f.name for f in fields(TrainSettings)})


def _new_job(name: str, min_clients: int, opts: dict[str, Any]) -> FedJob:
    """A job whose code is the installed oncofl (checked at its start), with the GPUs it reserves at each site."""
    job = FedJob(name=name, min_clients=min_clients)
    job.set_app_packages(["oncofl"])  # installed at every site and the server: never copied module by module
    # the oncofl this job is built for: a site or server with other code installed refuses the job at its start
    job.to_server(ProvenanceCheck(**installed()), id="oncofl_provenance")
    job.to_clients(ProvenanceCheck(**installed()), id="oncofl_provenance")
    if opts["gpus_per_site"]:  # export() writes it into meta.json
        gpus = {"num_of_gpus": opts["gpus_per_site"], "mem_per_gpu_in_GiB": opts["gpu_mem_gib"]}
        job.resource_spec = {"@default": gpus}
    return job


def _executor(opts: dict[str, Any], dp: dict[str, Any] | None, **settings: Any) -> OncoFLExecutor:
    """The sites' executor with the job's training settings: ``settings`` and every job option that is a field of
    :class:`~oncofl.site.settings.TrainSettings` (:data:`_SITE_OPTIONS`), passed as it is."""
    return OncoFLExecutor(
        **settings,
        **{k: opts[k] for k in _SITE_OPTIONS},
        dp=dp,
        send_weight_diff=sends_weight_diff(opts),
    )


def sends_weight_diff(opts: dict[str, Any]) -> bool:
    """Whether the sites send weight differences: FLARE's privacy filters work on them, and a quantized difference
    keeps far more of the update than quantized weights (the error scales with what is quantized)."""
    if opts["exchange"] == "auto":
        return bool(opts["privacy_filter"] or opts["compression"])
    return opts["exchange"] == "diff"


def _job_options(options: dict[str, Any]) -> dict[str, Any]:
    """The job's options over their defaults, refused when unknown, out of range or contradictory."""
    unknown = sorted(set(options) - set(ALGORITHM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown job option(s) {unknown}; known: {sorted(ALGORITHM_OPTIONS)}")
    opts = {**ALGORITHM_OPTIONS, **options}
    algorithm, he = opts["algorithm"], bool(opts["he"])
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algorithm}'; available: {', '.join(ALGORITHMS)}")
    if he and (
        algorithm not in ("fedavg", "fedprox", "fedbn") or opts["aggregation"] != "mean" or opts["privacy_filter"]
    ):
        raise ValueError(
            "homomorphic encryption: the server only adds ciphertexts, so use fedavg, fedprox or fedbn with mean "
            "aggregation and no privacy filter (the server-side norm checks cannot see encrypted values)"
        )
    _refuse_unchecked_options(algorithm, he, opts)
    if opts["server_optimizer"] not in SERVER_OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {opts['server_optimizer']!r}; available: {SERVER_OPTIMIZERS}")
    if opts["privacy_filter"] and opts["privacy_filter"] not in PRIVACY_FILTERS:
        raise ValueError(f"unknown privacy filter {opts['privacy_filter']!r}; available: {sorted(PRIVACY_FILTERS)}")
    _check_compression(opts)
    if opts["gpus_per_site"] < 0 or opts["gpu_mem_gib"] < 0:
        raise ValueError("gpus_per_site and gpu_mem_gib must be 0 or more")
    if int(opts["round_deadline"]) < 0:
        raise ValueError(
            f"round_deadline must be 0 (wait for every live site) or seconds > 0, got {int(opts['round_deadline'])}"
        )
    return opts


EXCHANGES = ("auto", "full", "diff")


def _check_compression(opts: dict[str, Any]) -> None:
    """Refuse an update compression or exchange the job's other options cannot carry."""
    if opts["exchange"] not in EXCHANGES:
        raise ValueError(f"unknown exchange {opts['exchange']!r}; available: {', '.join(EXCHANGES)}")
    if opts["exchange"] == "full" and opts["privacy_filter"]:
        raise ValueError("--exchange full: FLARE's privacy filters work on weight differences; use diff or auto")
    if not opts["compression"]:
        return
    if opts["compression"] not in COMPRESSIONS:
        raise ValueError(f"unknown compression {opts['compression']!r}; available: {', '.join(COMPRESSIONS)}")
    if opts["he"] or opts["algorithm"] == "scaffold":
        raise ValueError(
            "--compression: with --he the sites send ciphertexts and with scaffold a collection of model and "
            "control updates; compression is for fedavg, fedprox, fedopt and fedbn without --he"
        )


def _dp_settings(opts: dict[str, Any], num_rounds: int) -> dict[str, Any] | None:
    """Sample-level DP-SGD at every site, as the job carries it (oncofl.algorithms.DPSettings), or None."""
    if opts["dp_epsilon"] <= 0:
        return None
    return {
        "epsilon_budget": opts["dp_epsilon"],
        "delta": opts["dp_delta"],
        "max_grad_norm": opts["dp_max_grad_norm"],
        "noise_multiplier": opts["dp_noise_multiplier"],
        "planned_rounds": num_rounds,
    }


def _add_server(job: FedJob, key_metric: str, opts: dict[str, Any]) -> None:
    """The server side of the job's algorithm, chosen here and in :func:`_scatter_and_gather` only: model
    persistence, the shareable generator and the aggregator; then model selection, analytics and reports."""
    algorithm, he = opts["algorithm"], bool(opts["he"])
    if he:
        _add_he_server(job)
        job.privacy_scope = HE_SCOPE  # export() names it in meta.json
    else:
        job.to_server(PTFileModelPersistor(model="model"), id="persistor")
        job.to_server(_shareable_generator(algorithm, opts), id="shareable_generator")
        job.to_server(_aggregator(algorithm, opts), id="aggregator")
    if opts["compression"]:  # the sites' quantized updates decoded before the aggregator sees them
        from oncofl.compression import UpdateDequantizer

        job.to_server(UpdateDequantizer(), filter_type=FilterType.TASK_RESULT, tasks=["train"])
    job.to_server(AggregatedModelSelector(key_metric=key_metric), id="model_selector")
    job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_server(TBAnalyticsReceiver(events=["fed.analytix_log_stats"]), id="tb_receiver")
    job.to_server(SiteErrorReporter(), id="site_error_reporter")
    job.to_server(ParticipationMonitor(), id="participation_monitor")


def _scatter_and_gather(opts: dict[str, Any], dp: dict | None, train_timeout: int, **counts: int) -> Any:
    """The round workflow: SCAFFOLD's, DP's budget-keeping one, or FLARE's ScatterAndGather."""
    deadline = int(opts["round_deadline"])
    workflow_args = dict(
        **counts,
        # every live site contributes to every round by default: a slow hospital is waited for; with a deadline
        # the round closes at it, whoever has answered by then
        wait_time_after_min_received=deadline or WAIT_FOR_EVERY_SITE,
        aggregator_id="aggregator",
        persistor_id="persistor",
        shareable_generator_id="shareable_generator",
        train_timeout=deadline or train_timeout,
    )
    if opts["algorithm"] == "scaffold":
        workflow = ScatterAndGatherScaffold(**workflow_args)
    elif dp is not None:
        workflow = PrivacyBudgetScatterAndGather(**workflow_args, epsilon_budget=dp["epsilon_budget"])
    else:
        workflow = ScatterAndGather(**workflow_args)
    # FedJob skips arguments equal to their defaults
    workflow._always_serialize_args = ("min_clients", "num_rounds", "start_round", "wait_time_after_min_received")
    if dp is not None:
        workflow._always_serialize_args += ("epsilon_budget",)
    return workflow


def _cross_site_eval(he: bool, submit_model_timeout: int, validation_timeout: int) -> Any:
    """Cross-site evaluation of the global and every local model. A site that dropped out cannot answer: its tasks
    end after these timeouts, the others' results stay."""
    if he:
        from oncofl.he import HECrossSiteModelEvalFixed as cross_site_class
    else:
        cross_site_class = CrossSiteModelEval
    cross_site = cross_site_class(
        model_locator_id="model_locator",
        submit_model_timeout=submit_model_timeout,
        validation_timeout=validation_timeout,
    )
    cross_site._always_serialize_args = ("submit_model_timeout", "validation_timeout")
    return cross_site


def _add_client_filters(job: FedJob, opts: dict[str, Any], fault: dict[str, Any] | None) -> None:
    """The sites' filters, per task in the order FLARE runs them: a drill's fault, FLARE's privacy filter, the
    update's quantizer, the PHI gate on every result (last before HE encryption), HE's encryptor/decryptor."""
    data_filters: dict[str, list] = {t: [] for t in CLIENT_TASKS}
    result_filters: dict[str, list] = {t: [] for t in CLIENT_TASKS}
    if fault:  # a drill: one site's updates broken or poisoned on purpose
        drill = UpdateFaultFilter(**fault)
        data_filters["train"].append(drill)
        result_filters["train"].append(drill)
    if opts["privacy_filter"]:
        result_filters["train"].append(PRIVACY_FILTERS[opts["privacy_filter"]]())
    if opts["compression"]:
        from oncofl.compression import UpdateQuantizer

        result_filters["train"].append(UpdateQuantizer(quantization_type=opts["compression"]))
    phi_guard = PHIGuardFilter()  # everything leaving a site, last of the job's filters before HE encryption
    for task in CLIENT_TASKS:
        result_filters[task].append(phi_guard)
    if opts["he"]:  # last out, first in: sites encrypt every model they send and decrypt every model they receive
        from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
        from nvflare.app_opt.he.model_encryptor import HEModelEncryptor

        decryptor = HEModelDecryptor()
        data_filters["train"].append(decryptor)
        data_filters["validate"].append(decryptor)
        result_filters["train"].append(HEModelEncryptor(weigh_by_local_iter=True))
        result_filters["submit_model"].append(HEModelEncryptor(weigh_by_local_iter=False))
    _add_filter_chains(job, FilterType.TASK_DATA, data_filters)
    _add_filter_chains(job, FilterType.TASK_RESULT, result_filters)


def _add_filter_chains(job: FedJob, filter_type: FilterType, chains: dict[str, list]) -> None:
    """One chain per group of tasks with the same filters (FedJob refuses task sets that overlap)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for task, filters in chains.items():
        if filters:
            groups.setdefault(tuple(id(f) for f in filters), []).append(task)
    for tasks in groups.values():
        for f in chains[tasks[0]]:
            job.to_clients(f, filter_type=filter_type, tasks=tasks)


# the RobustAggregator's options: with --he (ciphertexts) or scaffold (FLARE's own aggregator) they would do nothing
ROBUST_OPTIONS = ("aggregation", "trim_fraction", "max_update_norm", "reject_norm_factor")


def _refuse_unchecked_options(algorithm: str, he: bool, opts: dict[str, Any]) -> None:
    """Refuse robust-aggregation options a job's server would silently ignore: with ``--he`` the server only adds
    ciphertexts, and SCAFFOLD's model and control updates go through FLARE's weighted mean; neither refuses or
    rejects any update (the sites' own guards still apply)."""
    if not (he or algorithm == "scaffold"):
        return
    changed = [k for k in ROBUST_OPTIONS if opts[k] != ALGORITHM_OPTIONS[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        why = "homomorphic encryption (--he)" if he else "scaffold"
        raise ValueError(
            f"{flags}: a server running {why} does not check or robustly combine updates, so these options would "
            "have no effect; leave them at their defaults, or choose fedavg, fedprox, fedopt or fedbn without --he"
        )


def _shareable_generator(algorithm: str, opts: dict[str, Any]) -> Any:
    """How the server turns the aggregated update into the next global model."""
    if algorithm == "fedopt":  # the server's optimizer step on the aggregated update (trainable parameters)
        if opts["server_optimizer"] == "adam":
            optimizer = {
                "path": "torch.optim.Adam",
                "args": {"lr": opts["server_lr"], "betas": [0.9, 0.99], "eps": 1e-3},
            }
        else:  # FedAvgM: lr 1 and no momentum is FedAvg
            optimizer = {
                "path": "torch.optim.SGD",
                "args": {"lr": opts["server_lr"], "momentum": opts["server_momentum"]},
            }
        optimizer["config_type"] = "dict"  # an argument, not a component for FLARE to build
        return PTFedOptModelShareableGenerator(optimizer_args=optimizer, source_model="model")
    return FullModelShareableGenerator()


def _aggregator(algorithm: str, opts: dict[str, Any]) -> Any:
    if algorithm == "scaffold":  # model and control updates arrive as one collection: FLARE's weighted mean of each
        kinds = {
            AppConstants.MODEL_WEIGHTS: DataKind.WEIGHT_DIFF,
            AlgorithmConstants.SCAFFOLD_CTRL_DIFF: DataKind.WEIGHT_DIFF,
        }
        return InTimeAccumulateWeightedAggregator(expected_data_kind=kinds)
    aggregator = RobustAggregator(
        method=opts["aggregation"],
        trim_fraction=opts["trim_fraction"],
        max_update_norm=opts["max_update_norm"],
        reject_norm_factor=opts["reject_norm_factor"],
    )
    aggregator._always_serialize_args = ("method", "reject_norm_factor")
    return aggregator


def _add_he_server(job: FedJob) -> None:
    """The server stores, aggregates and sends ciphertexts; it holds the public CKKS context only."""
    from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
    from nvflare.app_opt.he.model_serialize_filter import HEModelSerializeFilter
    from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator

    job.to_server(PTFileModelPersistor(model="model", filter_id="serialize_filter"), id="persistor")
    job.to_server(HEModelSerializeFilter(), id="serialize_filter")
    job.to_server(HEModelShareableGenerator(), id="shareable_generator")
    aggregator = HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=False)
    job.to_server(aggregator, id="aggregator")


def export(
    job: FedJob, out_dir: str | Path, *, ship_code: bool = False, guarded_tasks: tuple[str, ...] = CLIENT_TASKS
) -> Path:
    """Write ``<out_dir>/<job name>/`` (meta.json and the two app configs: settings only) and return it.

    ``ship_code`` (research mode, off by default): also copy the package into ``app/custom/oncofl``, so the sites run
    the job's code instead of their installed, reviewed oncofl -- including its privacy guards. Provisioned sites
    refuse such a job unless the consortium grants the submitter the ``byoc`` right (docs/security.md).
    ``guarded_tasks``: the client tasks whose results must pass the PHI gate (default: the training executor's)."""
    out_dir = Path(out_dir)
    job_dir = out_dir / job.name
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job.export_job(str(out_dir))
    extra = {"scope": getattr(job, "privacy_scope", None), "resource_spec": getattr(job, "resource_spec", None)}
    extra = {k: v for k, v in extra.items() if v}  # the sites' privacy.json scope (else the default), GPUs to reserve
    if extra:
        meta_file = job_dir / "meta.json"
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **extra}, indent=4) + "\n")
    server_config = job_dir / "app" / "config" / "config_fed_server.json"
    config = json.loads(server_config.read_text())
    # how long a client waits after handing in a result before asking for its next task (FLARE's default: 2 s, paid
    # every round and every cross-site task; scripts/fl_overhead.py measures it)
    config["server"] = {"task_request_interval": TASK_REQUEST_INTERVAL}
    server_config.write_text(json.dumps(config, indent=4) + "\n")
    client_file = job_dir / "app" / "config" / "config_fed_client.json"
    client = json.loads(client_file.read_text())
    for chain in client.get("task_result_filters", []) + client.get("task_data_filters", []):
        chain["tasks"] = sorted(chain.get("tasks", []))  # FedJob keeps them in a set: one order in every export
    try:
        _check_client_filters(client, guarded_tasks)
    except RuntimeError:
        shutil.rmtree(job_dir)  # no job folder is left behind that would send results past the gate
        raise
    client_file.write_text(json.dumps(client, indent=4) + "\n")
    custom = job_dir / "app" / "custom"
    if custom.exists():  # FedJob copies nothing of an app package; anything else here would be code shipped by accident
        raise RuntimeError(f"job export put code into {custom}: {sorted(p.name for p in custom.rglob('*.py'))}")
    if ship_code:
        task = json.loads((job_dir / "app" / "config" / "config_fed_client.json").read_text())["executors"][0]
        shutil.copytree(PACKAGE, custom / "oncofl", ignore=_package_files(task["executor"]["args"]["task"]))
    return job_dir


def _check_client_filters(config: dict, tasks: tuple[str, ...] = CLIENT_TASKS) -> None:
    """Refuse a client config whose sites would send any result past the PHI gate: FLARE matches filter chains by
    exact task name, so a chain for ``*`` (or a task left out) silently never runs."""
    for chain in config.get("task_result_filters", []) + config.get("task_data_filters", []):
        if any("*" in t for t in chain.get("tasks", [])):
            raise RuntimeError(f"a filter chain names tasks {chain['tasks']}: FLARE 2.9 has no task wildcard")
    guarded: set[str] = set()
    for chain in config.get("task_result_filters", []):
        if any(f.get("path") == f"{PHIGuardFilter.__module__}.PHIGuardFilter" for f in chain.get("filters", [])):
            guarded |= set(chain.get("tasks", []))
    missing = sorted(set(tasks) - guarded)
    if missing:
        raise RuntimeError(f"task result(s) {missing} would leave the sites without PHIGuardFilter")


def _package_files(task: str) -> Callable[[str, list[str]], set[str]]:
    """What export() leaves out of the shipped package: caches, the demo-data writers (``synthetic*.py``, ``wdbc.py``:
    sites bring their own data) and every task module but the job's own -- so adding a task changes no other job."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        if Path(folder).resolve() == PACKAGE.resolve():
            skipped |= {n for n in names if n.startswith("synthetic") and n.endswith(".py") or n == "wdbc.py"}
        if Path(folder).resolve() == (PACKAGE / "tasks").resolve():
            skipped |= {n for n in names if n.endswith(".py") and not n.startswith("_") and n != f"{task}.py"}
        return skipped

    return ignore


def cli(export_fn: Callable[..., Path], description: str, argv: list[str] | None = None, default_out: str = "jobs"):
    """Command line of a job definition: one option per keyword of ``export_fn``, defaults taken from it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", default=default_out, help=f"folder to write the job folder into (default: {default_out})"
    )
    options = [
        (p.name, p.default) for p in inspect.signature(export_fn).parameters.values() if p.kind == p.KEYWORD_ONLY
    ]
    for name, default in [*options, *ALGORITHM_OPTIONS.items()]:
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        elif name == "algorithm":
            parser.add_argument(flag, choices=ALGORITHMS, default=default, help=f"default: {default}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    changed = {k: args.pop(k) for k in ALGORITHM_OPTIONS if args[k] != ALGORITHM_OPTIONS[k]}
    for k in ALGORITHM_OPTIONS:
        args.pop(k, None)
    print(f"job written to {export_fn(out, **args, **changed)}")
