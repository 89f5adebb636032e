"""What a job folder tells prediction: the task, its network settings and its preprocessing parameters, read from the
executor's arguments in ``config_fed_client.json``, so a model is rebuilt and fed exactly as the job trained it."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from ..model_card import server_folder
from ..site.settings import TrainSettings
from ..tasks import TASK_NAMES

GLOBAL_MODEL = "FL_global_model.pt"
BUNDLE_CONFIG, BUNDLE_MODEL = "configs/inference.json", "models/model.pt"  # a bundle from oncofl export-bundle


@dataclass(frozen=True)
class JobSettings:
    """The settings prediction needs from a job.

    Args:
        task: the task name.
        network: the network builder's arguments (``{}``: the task's defaults).
        params: the preprocessing overrides (``{}``: the task's defaults).
        folder: the job folder they were read from.
        global_model: the job's global model file, where the folder is a finished run's server folder (else None).
    """

    task: str
    network: dict[str, Any]
    params: dict[str, Any]
    folder: Path
    global_model: Path | None = None


def client_config(folder: Path) -> Path:
    """The folder's ``config_fed_client.json``: in ``app*/config/`` (a job folder as exported or submitted, a run's
    server folder ``app_server``) or in ``config/``."""
    found = [*sorted(folder.glob("app*/config/config_fed_client.json")), *folder.glob("config/config_fed_client.json")]
    if not found and folder.is_dir():  # a POC or kit job's downloaded result: its server folder inside
        try:
            found = [server_folder(folder) / "app_server" / "config" / "config_fed_client.json"]
        except FileNotFoundError:
            found = []
    if not found:
        raise ModelFileError(
            "the job folder holds no app*/config/config_fed_client.json",
            fix="pass a job folder (jobs/<job>), a finished run's server folder (<workspace>/server/simulate_job) or a "
            "POC or kit job's downloaded result",
            path=str(folder),
        )
    return found[0]


def checked_settings(task: Any, network: Any, preprocess: Any) -> TrainSettings:
    """The settings as a site would validate them: a known task, network and preprocessing as JSON objects (a
    ``ValueError`` or ``TypeError`` otherwise)."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}")
    if not isinstance(network, dict | None) or not isinstance(preprocess, dict | None):
        raise TypeError("network and preprocess must be JSON objects")
    return TrainSettings(task=task, network=network, preprocess=preprocess)


def bundle_settings(folder: Path) -> JobSettings:
    """The settings of a MONAI bundle written by ``oncofl export-bundle``: its ``configs/inference.json`` (task,
    ``network_def``'s arguments, ``preprocessing_params``) and its ``models/model.pt``."""
    config = folder / BUNDLE_CONFIG
    try:
        inference = json.loads(config.read_text())
        network = {k: v for k, v in inference["network_def"].items() if k != "_target_"}
        settings = checked_settings(inference["task"], network, inference["preprocessing_params"])
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ModelFileError(
            f"the bundle's inference config names no oncofl task and settings ({type(e).__name__})",
            fix="pass a bundle written by oncofl export-bundle",
            path=str(config),
            detail=str(e),
        ) from e
    model = folder / BUNDLE_MODEL
    return JobSettings(
        settings.task, network, dict(settings.preprocess or {}), folder, model if model.is_file() else None
    )


def read_job_settings(folder: str | Path) -> JobSettings:
    """The task, network settings and preprocessing parameters of the job in ``folder`` (validated as a site would),
    or of the MONAI bundle in ``folder`` (:func:`bundle_settings`)."""
    folder = Path(folder)
    if (folder / BUNDLE_CONFIG).is_file():
        return bundle_settings(folder)
    config = client_config(folder)
    try:
        executor = json.loads(config.read_text())["executors"][0]["executor"]["args"]
        names = {f.name for f in fields(TrainSettings)}
        settings = TrainSettings.from_job(**{k: v for k, v in executor.items() if k in names})
        checked_settings(settings.task, settings.network, settings.preprocess)
    except (OSError, KeyError, IndexError, TypeError, AttributeError, ValueError) as e:  # JSONDecodeError: ValueError
        raise ModelFileError(
            f"the job's client config names no valid training settings ({type(e).__name__})",
            fix="pass a folder of a job written by `oncofl job export` (or a run of one)",
            path=str(config),
            detail=str(e),
        ) from e
    model = config.parents[1] / GLOBAL_MODEL
    return JobSettings(
        settings.task,
        dict(settings.network or {}),
        dict(settings.preprocess or {}),
        folder,
        model if model.is_file() else None,
    )
