"""The research tables of a prediction: ``predictions.csv`` and ``predictions.json``, one row per input.

By default a row names its input only by its number (the input's position: the datalist entry, or the sorted file
order) and holds the prediction (and, for a nodule, its centre as given): no path, no name, no patient or study
identifier, since folder and file names at hospitals often carry them. ``identify=True`` adds the input's path and
its DICOM instance UID, for a user who is allowed to link them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import PredictInput

CSV_NAME, JSON_NAME = "predictions.csv", "predictions.json"


@dataclass(frozen=True)
class CaseResult:
    """One input's outcome.

    Args:
        input: the input.
        values: the prediction's research columns (e.g. ``probability_malignant``, a segment's volume in ml).
        error: "" when predicted; else the local reason (it names files: console only, never in the tables).
        files: the files written for it.
        uid: its DICOM instance UID (a series' SeriesInstanceUID, an image's SOPInstanceUID), "" for other inputs.
    """

    input: PredictInput
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    files: tuple[Path, ...] = ()
    uid: str = ""

    def row(self, identify: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"case": self.input.number, "status": "failed" if self.error else "predicted"}
        if identify:
            row |= {"input": self.input.name, "instance_uid": self.uid}
        return row | self.values


def write_tables(results: list[CaseResult], out: Path, *, identify: bool = False) -> tuple[Path, Path]:
    """``out/predictions.csv`` and ``out/predictions.json`` (rows in input order)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [result.row(identify) for result in results]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / CSV_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    (out / JSON_NAME).write_text(json.dumps({"predictions": rows}, indent=1) + "\n")
    return out / CSV_NAME, out / JSON_NAME
