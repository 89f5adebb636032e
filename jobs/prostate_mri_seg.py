"""Definition of the ``prostate_mri_seg`` FLARE job; running it (re)writes the job folder ``jobs/prostate_mri_seg/``.

    python jobs/prostate_mri_seg.py                     # regenerate the committed job folder
    python jobs/prostate_mri_seg.py --out /tmp/jobs --num-rounds 10 --local-epochs 4

FL touchpoints: (1) the server scatters the global model and gathers weighted updates (ScatterAndGather),
(2) it keeps the best global model by the sites' validation Dice (IntimeModelSelector), (3) it then runs cross-site
evaluation of the global and every local model (CrossSiteModelEval). Hyper-parameters live here and travel with the
job; data paths and GPUs stay in each site's own config (see oncofl.site_config).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
from oncofl.server import SiteErrorReporter  # noqa: E402
from oncofl.tasks.prostate_seg import ProstateSegNet  # noqa: E402

JOB_NAME = "prostate_mri_seg"
PACKAGE = REPO / "custom" / "oncofl"


def build_job(
    *,
    num_rounds: int = 5,
    min_clients: int = 2,
    local_epochs: int = 6,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    train_timeout: int = 0,
    spacing_policy: str = "refuse",
) -> FedJob:
    """The job: FedAvg by scatter-and-gather, best-model selection on val_dice, then cross-site evaluation."""
    job = FedJob(name=JOB_NAME, min_clients=min_clients)
    job.set_app_packages(["oncofl"])  # the whole package is shipped by export_job(), not module by module

    job.to_server(PTFileModelPersistor(model=ProstateSegNet()), id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS), id="aggregator")
    job.to_server(IntimeModelSelector(key_metric="val_dice"), id="model_selector")
    job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
    job.to_server(ValidationJsonGenerator(), id="json_generator")
    job.to_server(TBAnalyticsReceiver(events=["fed.analytix_log_stats"]), id="tb_receiver")
    job.to_server(SiteErrorReporter(), id="site_error_reporter")
    workflow = ScatterAndGather(
        min_clients=min_clients,
        num_rounds=num_rounds,
        wait_time_after_min_received=5,
        aggregator_id="aggregator",
        persistor_id="persistor",
        shareable_generator_id="shareable_generator",
        train_timeout=train_timeout,
    )
    workflow._always_serialize_args = ("min_clients", "num_rounds")  # FedJob skips defaults; keep these visible
    job.to_server(workflow, id="scatter_and_gather")
    job.to_server(CrossSiteModelEval(model_locator_id="model_locator"), id="cross_site_eval")

    executor = OncoFLExecutor(
        task="prostate_seg",
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        preprocess={"spacing_policy": spacing_policy},  # a series with a gap: "refuse" it or "resample" it
    )
    job.to_clients(executor, id="executor", tasks=["train", "validate", "submit_model"])
    job.to_clients(PHIGuardFilter(), filter_type=FilterType.TASK_RESULT, tasks=["*"])  # everything leaving a site
    job.to_clients(
        ConvertToFedEvent(events_to_convert=["analytix_log_stats"], fed_event_prefix="fed."), id="event_to_fed"
    )
    return job


def export(out_dir: str | Path, **kwargs) -> Path:
    """Write ``<out_dir>/prostate_mri_seg/`` (meta.json, app/config, app/custom/oncofl) and return it."""
    out_dir = Path(out_dir)
    job_dir = out_dir / JOB_NAME
    if job_dir.exists():
        shutil.rmtree(job_dir)
    build_job(**kwargs).export_job(str(out_dir))
    shutil.copytree(
        PACKAGE, job_dir / "app" / "custom" / "oncofl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return job_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "jobs"), help="folder to write the job folder into")
    parser.add_argument("--num-rounds", type=int, default=5)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--spacing-policy", choices=["refuse", "resample"], default="refuse")
    args = parser.parse_args()
    job_dir = export(
        args.out,
        num_rounds=args.num_rounds,
        min_clients=args.min_clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        spacing_policy=args.spacing_policy,
    )
    print(f"job written to {job_dir}")


if __name__ == "__main__":
    main()
