"""The model card rendered from a hand-made server folder: real job configs (a DP job with a round deadline, as
`oncofl job export` writes them), the ledgers the server components write, real TensorBoard events, a real model file.
The card of a real simulator run is checked in tests/e2e/test_model_card.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from oncofl.jobs import breast_wdbc
from oncofl.model_card import read_run, render, write_model_card
from oncofl.tasks.breast_wdbc import WDBCNet

SITES = ["site-1", "site-2", "site-3"]
REFUSAL = "tensor fc1.weight holds NaN or inf"
CROSS = {
    site: {
        "SRV_FL_global_model.pt": {"val_accuracy": 0.9 + i / 100},
        "SRV_best_FL_global_model.pt": {"val_accuracy": 0.91 + i / 100},
        **{other: {"val_accuracy": 0.8 + j / 100} for j, other in enumerate(SITES)},
    }
    for i, site in enumerate(SITES)
}


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def participation() -> dict:
    """Round 0: every site; round 1: site-3 timed out (round deadline) and site-2's update was refused."""
    full = {"round": 0, "expected": SITES, "contributed": SITES, "excluded": {}, "missing": [], "left_out": {}}
    short = {
        "round": 1,
        "expected": SITES,
        "contributed": ["site-1"],
        "excluded": {"site-2": REFUSAL},
        "missing": ["site-3"],
        "left_out": {"site-3": "timed out", "site-2": "not aggregated"},
    }
    return {"rounds": [full, short], "dropped": ["site-3"], "excluded": ["site-2"], "last_round_contributors": []}


def aggregation() -> dict:
    settings = {"method": "mean", "trim_fraction": 0.2, "max_update_norm": 0.0, "reject_update_norm": 0.0}
    empty = {"refused": {}, "rejected": {}, "clipped": {}, "weights": {}, "notes": []}
    rounds = [
        {"round": 0, "accepted": SITES, **empty, "aggregated": SITES},
        {"round": 1, "accepted": ["site-1"], **empty, "refused": {"site-2": REFUSAL}, "aggregated": ["site-1"]},
    ]
    return {"settings": settings, "rounds": rounds, "declared_steps": {s: 20.0 for s in SITES}}


def privacy() -> dict:
    spent = {
        s: [{"round": r, "epsilon": 1.1 * (r + 1), "epsilon_next_round": 2.2 * (r + 1), "delta": 1e-5}]
        for r, s in [(0, "site-1"), (1, "site-2")]
    }
    return {"epsilon_budget": 3.0, "stopped_after_round": 1, "sites": spent}


@pytest.fixture(scope="module")
def server_folder(tmp_path_factory) -> Path:
    """A DP job's server folder after 2 rounds (the budget stopped it), as the simulator leaves it."""
    root = tmp_path_factory.mktemp("card")
    job = breast_wdbc.export(root / "jobs", num_rounds=3, dp_epsilon=3.0, round_deadline=30)
    server = root / "ws" / "server" / "simulate_job"
    shutil.copytree(job / "app" / "config", server / "app_server" / "config")
    shutil.copy(job / "meta.json", server / "meta.json")
    write_json(server / "participation.json", participation())
    write_json(server / "aggregation.json", aggregation())
    write_json(server / "privacy.json", privacy())
    write_json(server / "cross_site_val" / "cross_val_results.json", CROSS)
    for i, site in enumerate(SITES):  # what TBAnalyticsReceiver writes: one folder per site
        with SummaryWriter(log_dir=str(server / "tb_events" / site)) as tb:
            for r in range(2 if site != "site-3" else 1):
                tb.add_scalar("val_accuracy_global", 0.5 + 0.2 * r + i / 100, r)
    torch.save({"model": WDBCNet().state_dict()}, server / "app_server" / "FL_global_model.pt")
    return server


def test_card_names_participation_refusals_privacy_and_numbers(server_folder):
    card = render(read_run(server_folder), holdout={"final global": 0.9735})
    assert card.startswith("# Model card: breast_wdbc (`breast_wdbc`)")
    assert "**Not a medical device**" in card
    assert "- **Algorithm**: fedavg (server workflow `PrivacyBudgetScatterAndGather`)" in card
    assert "- **Rounds**: 2 run of 3 planned" in card
    assert "- **Sites**: 3 (site-1, site-2, site-3)" in card
    # participation: the short round says who contributed and why the others did not
    assert "| 0 | 3 of 3 | site-1, site-2, site-3 | - |" in card
    assert "| 1 | 1 of 3 | site-1 | site-2 (not aggregated), site-3 (timed out) |" in card
    assert f"| 1 | site-2 | refused | {REFUSAL} |" in card
    # privacy: the budget, each site's epsilon, the early stop
    assert "DP-SGD at every site, budget epsilon 3, delta 1e-05" in card
    assert "site-1: epsilon 1.100 spent after round 0" in card and "site-2: epsilon 2.200 spent after round 1" in card
    assert "training stopped at the budget after round 1" in card
    # performance: held-out score, every cross-site number, the curve (site-3 absent in round 1)
    assert "Held-out `val_accuracy` (cases no site trained on): final global 0.9735." in card
    for site, row in CROSS.items():
        cells = " | ".join(f"{row[m]['val_accuracy']:.4f}" for m in sorted(row))
        assert f"| {site} | {cells} |" in card
    assert "| 0 | 0.5100 | 0.5000 | 0.5100 | 0.5200 |" in card and "| 1 | 0.7050 | 0.7000 | 0.7100 | - |" in card
    # provenance: the job's code hash and the model file's digest
    built = json.loads((server_folder / "app_server/config/config_fed_server.json").read_text())["components"][0]
    assert f"`{built['args']['code_sha256']}`" in card
    digest = hashlib.sha256((server_folder / "app_server/FL_global_model.pt").read_bytes()).hexdigest()
    assert f"- **FL_global_model.pt** sha256: `{digest}`" in card
    assert "569 cases of one institution" in card  # the task's known limits
    assert str(server_folder.parent) not in card


def test_card_without_dp_or_ledgers_says_so(server_folder, tmp_path):
    bare = tmp_path / "job"
    shutil.copytree(server_folder / "app_server" / "config", bare / "app_server" / "config")
    client = bare / "app_server/config/config_fed_client.json"
    config = json.loads(client.read_text())
    del config["executors"][0]["executor"]["args"]["dp"]
    client.write_text(json.dumps(config))
    card = render(read_run(bare))
    assert "- **Privacy**: no differential privacy (DP-SGD off)" in card
    assert "Participation: not recorded" in card and "Learning curve: not recorded" in card
    assert "model files: none in the server folder" in card


def test_command_writes_the_card_next_to_the_global_model(server_folder, tmp_path):
    oncofl = Path(sys.executable).parent / "oncofl"
    out = subprocess.run(
        [str(oncofl), "model-card", "--job-dir", str(server_folder), "--holdout", "final global=0.97"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    card = server_folder / "app_server" / "model_card.md"
    assert f"model card: {card}" in out.stdout and "final global 0.9700" in card.read_text()
    bad = subprocess.run([str(oncofl), "model-card", "--job-dir", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Fix: pass the job's server folder" in bad.stderr
    assert write_model_card(server_folder, tmp_path / "card.md") == tmp_path / "card.md"


def test_an_he_runs_card_says_its_models_are_ciphertext_and_a_poc_download_is_read_as_it_is(tmp_path):
    """An HE job (FLARE's HE components on the server) in the layout of a POC job's downloaded result
    (``<download>/<job id>/workspace/app_server``, meta.json beside ``workspace``): the card finds the server folder,
    names the job, and says the model files are ciphertext and how a hospital decrypts them; a plain job's card
    says nothing of the kind."""
    job = breast_wdbc.export(tmp_path / "jobs", num_rounds=3, he=True)
    download = tmp_path / "results" / "8d3c0e4f"
    shutil.copytree(job / "app" / "config", download / "workspace" / "app_server" / "config")
    shutil.copy(job / "meta.json", download / "meta.json")
    write_json(download / "workspace" / "participation.json", participation())
    torch.save({"model": {"net.0.weight": b"ciphertext"}}, download / "workspace" / "app_server" / "FL_global_model.pt")
    card = render(read_run(download))
    assert card.startswith("# Model card: breast_wdbc (`breast_wdbc`)")
    assert "- **Homomorphic encryption**: every model a site sent was CKKS-encrypted" in card
    assert "(`oncofl predict --he-context`)" in card and "- **FL_global_model.pt** sha256: `" in card
    assert "` (ciphertext)" in card and "| 0 | 3 of 3 | site-1, site-2, site-3 | - |" in card
    assert write_model_card(download) == download / "workspace" / "app_server" / "model_card.md"
    plain = breast_wdbc.export(tmp_path / "plain", num_rounds=3)
    shutil.copytree(plain / "app" / "config", tmp_path / "p" / "app_server" / "config")
    assert "Homomorphic" not in render(read_run(tmp_path / "p")) and "ciphertext" not in render(
        read_run(tmp_path / "p")
    )
