"""The folder of a job that continues an interrupted one from its last saved global model.

It is the submitted job with its rounds renumbered to continue the old ones, split into a server app that starts from
the saved model (kept on the server's machine) and a client app without it: a client deployment is one message, and
the transport refuses messages above a few MB (a DenseNet121 checkpoint alone is 28 MB). The job stays without code
(an ``app_server/custom/`` folder would make it a BYOC job, which provisioned sites refuse).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .workspace import PocError

RESUME_CHECKPOINT = "resume_from_global_model.pt"


def resume_folder(
    source: Path, staged: Path, job_id: str, done: int, checkpoint: Path, kept: Path, deploy_map: dict
) -> Path:
    """Write into ``staged`` the job that continues ``job_id`` (submitted as ``source``) from round ``done``.

    Args:
        source: the folder ``job_id`` was submitted as.
        staged: where the new job folder goes (replaced).
        job_id: the interrupted job (named in the errors).
        done: the number of rounds it completed: the new job's first round.
        checkpoint: its last global model.
        kept: where that model is copied for the server to start from.
        deploy_map: the new job's ``meta.json`` deploy map (``app_server`` and ``app_clients`` to participants).
    """
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    _split_apps(staged)
    config_path = staged / "app_server" / "config" / "config_fed_server.json"
    config = json.loads(config_path.read_text())
    _continue_rounds(config, job_id, done)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, kept)
    for item in config["components"]:
        if item["id"] == "persistor":
            item["args"]["source_ckpt_file_full_name"] = str(kept.resolve())
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    meta = json.loads((staged / "meta.json").read_text())
    meta["name"] = f"{meta.get('name', source.name)}_resume"
    meta["deploy_map"] = deploy_map
    (staged / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return staged


def _split_apps(staged: Path) -> None:
    """``app/`` into ``app_server/`` (server config only) and ``app_clients/`` (client config only)."""
    app = staged / "app"
    shutil.copytree(app, staged / "app_server")
    shutil.copytree(app, staged / "app_clients")
    shutil.rmtree(app)
    (staged / "app_server" / "config" / "config_fed_client.json").unlink()
    (staged / "app_clients" / "config" / "config_fed_server.json").unlink()


def _continue_rounds(config: dict, job_id: str, done: int) -> None:
    """Make the server config's ScatterAndGather run the rounds from ``done`` to the original end."""
    for item in config["workflows"]:
        if item["path"].endswith("ScatterAndGather"):
            args = item["args"]
            total = args.get("start_round", 0) + args["num_rounds"]
            if done >= total:
                raise PocError(f"job {job_id} completed all {total} rounds; nothing to resume")
            args.update(start_round=done, num_rounds=total - done)
