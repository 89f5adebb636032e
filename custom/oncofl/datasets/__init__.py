"""Public datasets as their users download them -> per-site datalists with the literature's institution split.

    oncofl datasets list
    oncofl datasets prepare <dataset> --source DOWNLOAD_ROOT --out DIR [--val-fraction 0.2] [--seed 0]

One module per dataset (its docstring cites the release layout it reads). Each exposes ``NAME`` (the command's
name), ``TASK`` (the oncofl task its datalists feed), ``SUMMARY`` (one line) and ``cases(source, out)`` returning
:class:`~oncofl.datasets.common.DatasetCase` objects (``out`` is where a file that must be converted is written);
:func:`~oncofl.datasets.common.write_sites` writes the sites. The download is read in place and never changed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from ..errors import OncoFLError
from .common import DatasetCase, DatasetError, require, write_sites

ADAPTERS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common"))


def adapter(name: str) -> ModuleType:
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset '{name}'; available: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"{__name__}.{name}")


def prepare(name: str, source: str | Path, out: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """The dataset at ``source`` as sites under ``out`` (:func:`~oncofl.datasets.common.write_sites`)."""
    module = adapter(name)
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise DatasetError("the download folder does not exist", fix="give the dataset's root folder", path=str(source))
    cases = module.cases(source, out)
    return write_sites(
        cases, source=source, out=out, dataset=module.NAME, task=module.TASK, val_fraction=val_fraction, seed=seed,
        config_fields=getattr(module, "CONFIG_FIELDS", None),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the sites were written, 2 for a download that cannot be used."""
    parser = argparse.ArgumentParser(prog="oncofl datasets", description=__doc__.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the datasets and the task each feeds")
    prep = sub.add_parser("prepare", help="a download -> per-site datalists and site configs")
    prep.add_argument("dataset", choices=ADAPTERS)
    prep.add_argument("--source", required=True, help="the dataset's root folder, as downloaded")
    prep.add_argument("--out", required=True, help="where the datalists, site configs and conversions go")
    prep.add_argument("--val-fraction", type=float, default=0.2)
    prep.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in ADAPTERS:
            module = adapter(name)
            print(f"{name:16s} task {module.TASK:18s} {module.SUMMARY}")
        return 0
    try:
        out = prepare(args.dataset, args.source, args.out, val_fraction=args.val_fraction, seed=args.seed)
    except OncoFLError as e:
        print(e.local_message())
        return 2
    print(f"{args.dataset}: sites written to {out} (site configs in {out / 'site_configs'}, counts in summary.json)")
    return 0


__all__ = ["ADAPTERS", "DatasetCase", "DatasetError", "adapter", "main", "prepare", "require", "write_sites"]
