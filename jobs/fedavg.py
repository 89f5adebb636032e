"""The shape every oncofl job shares: FedAvg by scatter-and-gather, best-model selection, cross-site evaluation.

FL touchpoints: (1) the server scatters the global model and gathers updates weighted by local steps
(ScatterAndGather), (2) it keeps the best global model by the sites' validation metric (IntimeModelSelector), (3) it
then runs cross-site evaluation of the global and every local model (CrossSiteModelEval). Hyper-parameters live in
the job definitions and travel with the job; data paths and GPUs stay in each site's own config.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "custom" / "oncofl"
TASK_REQUEST_INTERVAL = 0.5  # seconds; see export()
sys.path.insert(0, str(REPO / "custom"))

from nvflare.apis.dxo import DataKind  # noqa: E402
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import (  # noqa: E402
    InTimeAccumulateWeightedAggregator,
)
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import (  # noqa: E402
    FullModelShareableGenerator,
)
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent  # noqa: E402
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector  # noqa: E402
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator  # noqa: E402
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval  # noqa: E402
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather  # noqa: E402
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator  # noqa: E402
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor  # noqa: E402
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver  # noqa: E402
from nvflare.job_config.api import FedJob  # noqa: E402
from nvflare.job_config.defs import FilterType  # noqa: E402

from oncofl.executor import OncoFLExecutor  # noqa: E402
from oncofl.privacy import PHIGuardFilter  # noqa: E402
from oncofl.server import ParticipationMonitor, SiteErrorReporter  # noqa: E402
from oncofl.tasks import get_task  # noqa: E402


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
) -> FedJob:
    """One job for one task of :mod:`oncofl.tasks`; the server's model is the task's network."""
    spec = get_task(task)
    job = FedJob(name=name, min_clients=min_clients)
    job.set_app_packages(["oncofl"])  # the whole package is shipped by export(), not module by module

    job.to_server(PTFileModelPersistor(model=spec.build_network(**(network or {}))), id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS), id="aggregator")
    job.to_server(IntimeModelSelector(key_metric=spec.key_metric), id="model_selector")
    job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_server(TBAnalyticsReceiver(events=["fed.analytix_log_stats"]), id="tb_receiver")
    job.to_server(SiteErrorReporter(), id="site_error_reporter")
    job.to_server(ParticipationMonitor(), id="participation_monitor")
    workflow = ScatterAndGather(
        min_clients=min_clients,
        num_rounds=num_rounds,
        wait_time_after_min_received=5,
        aggregator_id="aggregator",
        persistor_id="persistor",
        shareable_generator_id="shareable_generator",
        train_timeout=train_timeout,
    )
    workflow._always_serialize_args = ("min_clients", "num_rounds", "start_round")  # FedJob skips defaults
    job.to_server(workflow, id="scatter_and_gather")
    # a site that dropped out cannot answer: its cross-site tasks end after these timeouts, the others' results stay
    cross_site = CrossSiteModelEval(
        model_locator_id="model_locator",
        submit_model_timeout=submit_model_timeout,
        validation_timeout=validation_timeout,
    )
    cross_site._always_serialize_args = ("submit_model_timeout", "validation_timeout")
    job.to_server(cross_site, id="cross_site_eval")

    executor = OncoFLExecutor(
        task=task,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        preprocess=preprocess,
        network=network,
    )
    job.to_clients(executor, id="executor", tasks=["train", "validate", "submit_model"])
    job.to_clients(PHIGuardFilter(), filter_type=FilterType.TASK_RESULT, tasks=["*"])  # everything leaving a site
    job.to_clients(
        ConvertToFedEvent(events_to_convert=["analytix_log_stats"], fed_event_prefix="fed."), id="event_to_fed"
    )
    return job


def export(job: FedJob, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<job name>/`` (meta.json, app/config, app/custom/oncofl) and return it."""
    out_dir = Path(out_dir)
    job_dir = out_dir / job.name
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job.export_job(str(out_dir))
    server_config = job_dir / "app" / "config" / "config_fed_server.json"
    config = json.loads(server_config.read_text())
    # how long a client waits after handing in a result before asking for its next task (FLARE's default: 2 s, paid
    # every round and every cross-site task; scripts/fl_overhead.py measures it)
    config["server"] = {"task_request_interval": TASK_REQUEST_INTERVAL}
    server_config.write_text(json.dumps(config, indent=4) + "\n")
    shutil.copytree(
        PACKAGE, job_dir / "app" / "custom" / "oncofl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return job_dir


def cli(export_fn: Callable[..., Path], description: str) -> None:
    """Command line of a job definition: one option per keyword of ``export_fn``, defaults taken from it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "jobs"), help="folder to write the job folder into")
    options = [p for p in inspect.signature(export_fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    for p in options:
        flag = "--" + p.name.replace("_", "-")
        if isinstance(p.default, bool):
            parser.add_argument(flag, action="store_true", default=p.default)
        else:
            parser.add_argument(flag, type=type(p.default), default=p.default, help=f"default: {p.default}")
    args = vars(parser.parse_args())
    out = args.pop("out")
    print(f"job written to {export_fn(out, **args)}")
