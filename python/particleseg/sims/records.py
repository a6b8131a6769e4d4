"""What makes ``sims run`` resumable: its settings, particle tables in records, each field's plan.

A field's completion record (:func:`particleseg.pipeline.plan_item`) holds its particles and
its row of ``fields.csv``; a rerun takes them back when the inputs and these settings are the same.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from ..errors import InputError, OutputExistsError
from ..io import check_outputs
from ..models.bundle import model_identity
from ..pipeline import RECORD_DIR, plan_item
from .fields import FieldSource
from .params import SimsParams


def field_stem(name: str) -> str:
    """Give the file-name stem of a field's outputs and completion record (``a/b`` -> ``a_b``)."""
    return name.replace("/", "_")


def run_settings(bundle, params: SimsParams, save_labels: bool = False) -> dict:
    """Collect everything that decides a field's results besides the field.

    That is the model (its bundle and a hash of its metadata) and the resolved settings (not
    ``batch_size``). A rerun skips a field only when these are the same as recorded
    (:func:`particleseg.pipeline.plan_item`).
    """
    resolved = dataclasses.asdict(params.resolved(bundle))
    resolved.pop("batch_size", None)
    settings = {
        "command": "sims run",
        **model_identity(bundle),
        **resolved,
        "save_labels": bool(save_labels),
    }
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back


def table_to_record(table: pd.DataFrame) -> dict:
    """Turn a particle table into JSON-able columns with their dtypes.

    :func:`table_from_record` gives back the same values and dtypes (floats round-trip exactly,
    NaN included).
    """
    return {
        "columns": list(table.columns),
        "dtypes": [str(t) for t in table.dtypes],
        "data": [table[c].tolist() for c in table.columns],
    }


def table_from_record(record: dict) -> pd.DataFrame:
    """Give back the particle table of a record made by :func:`table_to_record`, values and dtypes alike."""
    return pd.DataFrame(
        {
            c: pd.Series(values, dtype=dtype)
            for c, dtype, values in zip(record["columns"], record["dtypes"], record["data"])
        }
    )


def _plan_fields(sources: list[FieldSource], out: Path, settings: dict, overwrite: bool, save_labels: bool):
    """Plan each field: its :class:`~particleseg.pipeline.ItemPlan` (done earlier, new, redo).

    Fields whose outputs this run may not replace stop the run before any work, in one line.
    """
    stems: dict[str, str] = {}
    for src in sources:
        other = stems.setdefault(field_stem(src.name), src.name)
        if other != src.name:
            raise InputError(
                f"{src.where}: fields {other!r} and {src.name!r} would have outputs of the same name; "
                "rename one, or run them into different --out folders"
            )
    plans = [
        plan_item(
            Path(src.where),
            out,
            settings,
            overwrite,
            outputs=_field_outputs(src, out, save_labels),
            name=src.name,
            stem=f"{field_stem(src.name)}.field",
            inputs=src.paths,
        )
        for src in sources
    ]
    conflicts = [pl for pl in plans if pl.action == "conflict"]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more field(s))" if len(conflicts) > 1 else ""
        raise OutputExistsError(conflicts[0].message + more)
    return plans


def _field_outputs(src: FieldSource, out: Path, save_labels: bool) -> dict[str, Path]:
    return {"labels": out / "labels" / f"{field_stem(src.name)}_labels.tif"} if save_labels else {}


def _check_reports(out: Path, reports: list[Path], overwrite: bool) -> None:
    """Refuse reports that this command did not make.

    ``particles.csv``, ``fields.csv`` and ``ratios.png`` are rewritten by every run into a
    folder this command made (its ``.particleseg/sims.json``); found anywhere else they are
    refused (without ``overwrite``).
    """
    if not overwrite and not (out / RECORD_DIR / "sims.json").is_file():
        check_outputs(reports, False)
