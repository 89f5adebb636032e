"""`oncofl simulate` writes a model card from the run's own records: a real breast_wdbc run in the FLARE simulator
(real data, 3 sites, 3 rounds). The rendering of every case (timed-out site, refused update, DP) is in
tests/unit/test_model_card.py."""

from __future__ import annotations

import json

import pytest

from oncofl import simulate, wdbc
from oncofl.jobs import breast_wdbc

SITES = ["site-1", "site-2", "site-3"]
pytestmark = pytest.mark.slow


def test_simulate_writes_a_card_from_the_run_records(tmp_path, capsys):
    data = wdbc.generate(tmp_path / "data", seed=0)
    job = breast_wdbc.export(tmp_path / "jobs", num_rounds=3)
    assert simulate.main(["--job", str(job), "--data", str(data), "--workspace", str(tmp_path / "ws")]) == 0
    job_dir = tmp_path / "ws" / "server" / "simulate_job"
    card_path = job_dir / "app_server" / "model_card.md"
    printed = capsys.readouterr().out
    assert f"model card         : {card_path}" in printed
    assert f"predict new studies: oncofl predict --job {job_dir} --input STUDIES --out DIR" in printed
    card = card_path.read_text()

    assert "- **Algorithm**: fedavg (server workflow `ScatterAndGather`)" in card
    assert "- **Sites**: 3 (site-1, site-2, site-3)" in card
    rounds = json.loads((job_dir / "participation.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:  # every round's row, as the ledger has it
        assert f"| {r['round']} | {len(r['contributed'])} of 3 | {', '.join(r['contributed'])} |" in card
    cross = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(cross) == SITES
    for site, row in cross.items():  # the cross-site matrix, number for number
        cells = " | ".join(f"{row[m]['val_accuracy']:.4f}" for m in sorted(row))
        assert f"| {site} | {cells} |" in card
    server = json.loads((job_dir / "app_server" / "config" / "config_fed_server.json").read_text())
    built = next(c["args"] for c in server["components"] if c["id"] == "oncofl_provenance")
    assert f"- **code sha256**: `{built['code_sha256']}`" in card and f"version**: {built['version']}" in card
    assert "Held-out `val_accuracy` (cases no site trained on): initial " in card
    assert "- **Privacy**: no differential privacy" in card and "| round | mean | site-1 | site-2 | site-3 |" in card
    # no path: not the data folder, its sites' folders, nor the workspace
    assert str(data) not in card and str(tmp_path) not in card
