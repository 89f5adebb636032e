"""scripts/benchmark.py runs its three measurements on the CPU (tiny settings): a smoke test, not a timing."""

import math

import torch

from scripts.benchmark import benchmark_task, table


def test_benchmark_measures_pipeline_ceiling_and_naive_loader(synthetic_data):
    row = benchmark_task("prostate_seg", torch.device("cpu"), data_root=synthetic_data, warmup=0, repeats=1, steps=2)
    assert row["cases"] > 0 and row["batch"] >= 1 and row["precision"] == "fp32"  # no autocast on the CPU
    for key in ("pipeline", "ceiling", "naive"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    text = table([row], "CPU")
    assert "prostate_seg" in text and f"{row['pipeline'] / row['ceiling']:.2f}" in text
