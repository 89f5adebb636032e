"""The evidence report's table and provenance (the runs themselves are exercised by tests/e2e/test_algorithms.py)."""

from __future__ import annotations

import argparse

from oncofl.report import write_report


def _row(held_out: float, per_site: dict[str, float], curve: list[float] | None = None) -> dict:
    return {"held_out": held_out, "per_site": per_site, "curve": curve or [], "cross_site": {}}


def _runs(dp: tuple[float, float]) -> dict[int, dict[str, dict]]:
    return {
        seed: {
            "federated fedavg": _row(0.98, {"site-1": 0.95, "site-2": 0.97}, [0.5, 0.9, 0.98]),
            "federated fedavg+DP(eps=2)": _row(dp[seed], {"site-1": 0.90, "site-2": 0.93}, [0.4, 0.9]),
            "centralized": _row(0.96 + 0.02 * seed, {"site-1": 0.94, "site-2": 0.96}),
            "initial model": _row(0.40, {}),
        }
        for seed in (0, 1)
    }


def _args(out, merge: bool) -> argparse.Namespace:
    args = argparse.Namespace(task="breast_wdbc", out=str(out), merge=merge)
    args.merged_names = ["federated fedavg+DP(eps=2)"]
    return args


def test_table_rows_are_mean_sd_ratio_worst_site_and_every_seed(tmp_path):
    report = write_report(_args(tmp_path, merge=False), _runs((0.94, 0.96)), seconds=120).read_text()
    assert report.count("Made by ") == 1 and "Rows " not in report
    # held-out mean ± sd over the seeds, ratio to the centralized mean (0.97), worst site, then each seed
    assert "| federated fedavg+DP(eps=2) | 0.9500 ± 0.0141 | 0.979 | 0.9000 ± 0.0000 | 0.9400 | 0.9600 |" in report
    assert "| centralized | 0.9700 ± 0.0141 | 1.000 |" in report
    assert "| initial model | 0.4000 ± 0.0000 | 0.412 | - |" in report
    assert (tmp_path / "learning_curves.png").stat().st_size > 0 and (tmp_path / "results.json").is_file()


def test_merge_keeps_how_the_other_rows_were_made_and_replaces_an_earlier_rerun(tmp_path):
    write_report(_args(tmp_path, merge=False), _runs((0.94, 0.96)), seconds=120)
    write_report(_args(tmp_path, merge=True), _runs((0.95, 0.97)), seconds=60)
    report = write_report(_args(tmp_path, merge=True), _runs((0.96, 0.98)), seconds=60).read_text()
    assert report.count("Made by ") == 1  # the first full run still names how the other rows were made
    assert report.count("Rows federated fedavg+DP(eps=2) and the initial model (re)run by ") == 1  # the last rerun
    assert "| federated fedavg+DP(eps=2) | 0.9700 ± 0.0141 |" in report


def test_a_merged_new_row_comes_before_the_initial_model_row(tmp_path):
    runs = _runs((0.94, 0.96))
    for seed in runs:  # how a merge orders them: the earlier report's rows, then the new configuration
        runs[seed]["federated fedavg+reset"] = _row(0.99, {"site-1": 0.96, "site-2": 0.98})
    rows = [
        line.split(" | ")[0] for line in write_report(_args(tmp_path, merge=False), runs, 60).read_text().splitlines()
    ]
    rows = [r.removeprefix("| ") for r in rows if r.startswith("| ") and r != "| model"]
    assert rows == [
        "federated fedavg",
        "federated fedavg+DP(eps=2)",
        "centralized",
        "federated fedavg+reset",
        "initial model",
    ]
