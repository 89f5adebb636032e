"""``oncofl poc demo``: the whole rehearsal -- prepare, start, submit, follow, download, stop -- each step timed."""

from __future__ import annotations

import time
from pathlib import Path

from ..job_control import DEFAULT_JOB, JobResults
from .controller import Poc


class _Steps:
    """Runs named steps, printing each one's start and duration, and keeps the timings."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    def __call__(self, name: str, fn, *args, **kwargs):
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings.append((name, time.perf_counter() - t0))
        print(f"[{name}] done in {self.timings[-1][1]:.1f} s", flush=True)
        return out


def demo(poc: Poc, job: Path, via: str, timeout: float) -> int:
    """The whole rehearsal, each step timed; the POC is stopped even when a step fails."""
    step = _Steps()
    try:
        step("prepare", poc.prepare)
        step("start", poc.start)
        job_id = step(f"submit ({via})", poc.submit, job, via)
        print(f"job {job_id}")
        chain, meta = step("run", poc.follow, job_id, timeout)
        print(f"job status: {meta.get('status')}" + (f" (continued as {', '.join(chain[1:])})" if chain[1:] else ""))
        result = JobResults(step("download", poc.download, chain[-1]))
    finally:
        left = step("stop", poc.stop)
        if left:
            print(f"killed {len(left)} process(es) that did not stop in time: {left}")
    _print_results(poc, job, result)
    print("\nstep timings (s): " + ", ".join(f"{n} {s:.1f}" for n, s in step.timings))
    return 0 if str(meta.get("status", "")).startswith("FINISHED") else 1


def _print_results(poc: Poc, job: Path, result: JobResults) -> None:
    """Where the results are, the cross-site matrix and, for the default job, the held-out Dice before and after."""
    from ...simulate import cross_site_table

    print(f"\nresults       : {result.root}")
    print(f"global model  : {result.global_model}")
    print(f"cross-site    : {result.cross_site}\n{cross_site_table(result.cross_site)}")
    print(f"TensorBoard   : tensorboard --logdir {result.tb_events}")
    from ...model_card import write_model_card

    print(f"model card    : {write_model_card(result.root, data_summary=None)}")
    print(f"predict       : oncofl predict --job {result.root} --input STUDIES --out DIR")
    holdout = poc.data / "holdout"
    if holdout.is_dir() and Path(job).name == DEFAULT_JOB:
        from ...evaluation import holdout_metric

        initial, final = holdout_metric(None, holdout), holdout_metric(result.global_model, holdout)
        print(f"held-out Dice (cases no hospital trained on): initial {initial:.3f} -> final global {final:.3f}")
