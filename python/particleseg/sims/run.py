"""The ``sims run`` batch: every field of a folder read, detected and measured, resumably.

Fields go to the network ``batch_size`` at a time, locally or as tasks on a Dask cluster
(:mod:`particleseg.distributed`); this process writes each field's completion record and the
reports (``particles.csv``, ``fields.csv``, ``ratios.png``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from .. import interrupts
from ..distributed import _noted, bundle_state, connect, map_ordered, worker_bundle, worker_cached
from ..errors import InputError, ParticlesegError
from ..io import check_output_folder, image_pixels, remove_stale_temporaries, write_atomic, write_csv, write_tiff
from ..pipeline import RECORD_DIR, _json_default, _write_item, input_fingerprint
from .counts import concat_particles, measure_particle_isotopes, significant
from .detect import FieldDetector
from .fields import Field, FieldSource, find_fields, read_field
from .isotopes import ISOTOPES
from .params import SimsParams
from .plot import plot_ratios
from .records import (
    _check_reports,
    _field_outputs,
    _plan_fields,
    field_stem,
    run_settings,
    table_from_record,
    table_to_record,
)


def run_output_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Give the paths of the reports of ``sims run`` in ``out_dir`` and of its labels folder.

    Keys: ``particles`` (``particles.csv``), ``fields`` (``fields.csv``), ``plot``
    (``ratios.png``) and ``labels`` (the folder of ``FIELD_labels.tif``).
    """
    out = Path(out_dir)
    return {
        "particles": out / "particles.csv",
        "fields": out / "fields.csv",
        "plot": out / "ratios.png",
        "labels": out / "labels",
    }


#: columns of ``fields.csv``
FIELD_COLUMNS = ["field", "status", "particles", "isotopes", "height", "width", "error"]


def run_fields(
    inputs,
    bundle,
    out_dir: str | os.PathLike,
    params: SimsParams | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    save_labels: bool = False,
    plot: bool = True,
    predictor=None,
    scheduler=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect and measure the particles of all fields of view in ``inputs``, resumably.

    Fields are read ``params.batch_size`` at a time, predicted as one network batch, then
    thresholded, split and measured; a field that cannot be read is listed with its error in
    ``fields.csv`` and the run goes on.

    Each field's results are kept, as soon as it is measured, in its completion record
    ``.particleseg/FIELD.field.done.json`` (input fingerprint, settings, its particles and its
    row of ``fields.csv``; written last and atomically, after ``labels/FIELD_labels.tif``), the
    same records :func:`particleseg.pipeline.segment_files` keeps per image. A rerun of the same
    run (after a kill, Ctrl-C or a crash) takes the finished fields from their records and
    computes the others; the network batches are formed as in an uninterrupted run, so the
    outputs are identical to one. Fields whose records were made from other inputs or settings
    stop the run before any work (``overwrite`` redoes everything). Ctrl-C (KeyboardInterrupt)
    rolls back the field being written, writes the reports of the finished fields (the others
    listed as ``not started``) and is raised again.

    Writes to ``out_dir``: ``particles.csv`` (one row per particle: field, position, counts,
    background, net counts, ratios and uncertainties), ``fields.csv`` (one row per field:
    status, number of particles, error), ``ratios.png`` (:func:`plot_ratios`) and, with
    ``save_labels``, ``labels/FIELD_labels.tif``.

    ``scheduler`` (``local:N``, ``tcp://HOST:PORT`` or a :class:`distributed.Client`; see
    :mod:`particleseg.distributed`): each network batch of fields is read, predicted and measured
    by a task on a Dask cluster, and this process writes the results, as above; the outputs are
    those of a local run.

    Returns
    -------
    particles, fields : DataFrame
        ``fields.attrs`` holds ``seconds`` and the counts ``done_earlier``, ``measured``.
    """
    from tqdm.auto import tqdm

    sources = (
        inputs
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], FieldSource)
        else find_fields(inputs, pattern)
    )
    if not sources:
        raise InputError(f"{inputs}: no TIFF fields of view found")
    out = Path(out_dir)
    paths = run_output_paths(out)
    reports = [paths["particles"], paths["fields"]] + ([paths["plot"]] if plot else [])
    det = FieldDetector(bundle, params, predictor)
    p = det.params
    settings = run_settings(bundle, p, save_labels)
    _check_reports(out, reports, overwrite)
    check_output_folder(out)  # (the reports are small; 16-bit labels if asked for, checked below)
    for folder in (out, out / RECORD_DIR, paths["labels"]):
        remove_stale_temporaries(folder, [q.name for q in reports])
    plans = _plan_fields(sources, out, settings, overwrite, save_labels)
    if save_labels:
        check_output_folder(out, 2 * sum(_field_pixels(src) for src, pl in zip(sources, plans) if pl.action != "done"))
    write_atomic(
        out / RECORD_DIR / "sims.json",
        lambda tmp: tmp.write_text(json.dumps({"command": "sims run", "settings": settings}, indent=1)),
        True,
    )
    results: dict[str, tuple[dict, pd.DataFrame | None]] = {}  # field -> (its fields.csv row, particles)
    for src, pl in zip(sources, plans):
        if pl.action == "done" and pl.row:
            results[src.name] = (pl.row["field"], table_from_record(pl.row["particles"]))
    counts = {"done_earlier": len(results), "measured": 0}
    # the same network batches as an uninterrupted run; fields done earlier are in them again
    chunks = [
        (chunk, {src.name for src in chunk if src.name in results})
        for chunk in (sources[b0 : b0 + max(1, p.batch_size)] for b0 in range(0, len(sources), max(1, p.batch_size)))
        if not all(src.name in results for src in chunk)
    ]
    if scheduler is not None and predictor is not None:
        raise InputError("sims run: a predictor of this process cannot run on a Dask cluster; give the bundle only")
    t0 = time.perf_counter()
    bar = tqdm(total=len(sources), desc="SIMS fields", unit="field", disable=not progress)
    interrupted = None
    cluster = contextlib.ExitStack()
    try:
        bar.update(len(results))
        if scheduler is None or not chunks:
            measured = ((i, (measure_chunk(det, chunk, done), None, [])) for i, (chunk, done) in enumerate(chunks))
        else:
            client = cluster.enter_context(connect(scheduler))
            measured = map_ordered(
                client,
                _chunk_task,
                chunks,
                (bundle_state(bundle), params),
                names=[f"fields {chunk[0].name}..{chunk[-1].name}" for chunk, _ in chunks],
            )
        for _, (entries, error, notes) in measured:
            _show_notes(notes)
            if error is not None:
                raise error
            for src, row, t, lab in entries:
                if t is None:  # could not be read
                    results[src.name] = (row, None)
                    bar.update(1)
                    continue
                outputs = _field_outputs(src, out, save_labels)
                writers = {"labels": lambda q, lab=lab: write_tiff_labels(q, lab)}
                fingerprint = {"name": src.name, **input_fingerprint(src.paths)}
                record_row = json.loads(
                    json.dumps({"field": row, "particles": table_to_record(t)}, default=_json_default)
                )
                _write_item(
                    Path(src.where),
                    out,
                    outputs,
                    writers,
                    fingerprint,
                    settings,
                    record_row,
                    stem=f"{field_stem(src.name)}.field",
                )
                results[src.name] = (row, t)
                counts["measured"] += 1
                bar.update(1)
    except BaseException as exc:  # Ctrl-C, or SIGTERM in the CLI: the reports of what is finished
        interrupted = interrupts.as_interrupt(exc)  # (also one a library turned into another error)
        if interrupted is None:
            raise
    finally:
        bar.close()
        cluster.close()
    elapsed = time.perf_counter() - t0
    particles, fields_table = _tables(sources, results)
    fields_table.attrs.update(seconds=elapsed, **counts)
    write_csv(paths["particles"], particles, True)
    write_csv(paths["fields"], fields_table, True)
    if plot:
        plot_ratios(particles, paths["plot"], overwrite=True)
    if interrupted is not None:
        raise interrupted
    return particles, fields_table


def measure_chunk(det: FieldDetector, chunk: Sequence[FieldSource], done: set) -> Iterator[tuple]:
    """Read, predict (one network batch) and measure the fields of ``chunk`` not in ``done``.

    Yields ``(source, fields.csv row, particles, labels)`` for each: first those that cannot be
    read (particles and labels None, the row says why), then each measured field as soon as it is
    measured (the batch writes it before the next is measured). The fields in ``done`` are read
    again only to give the network the batch it had before.
    """
    p = det.params
    read: dict[str, Field] = {}
    for src in chunk:
        if src.name in done:
            continue
        try:
            read[src.name] = read_field(src, p.channels)
        except ParticlesegError as exc:
            yield (
                src,
                {
                    "field": src.name,
                    "status": "error",
                    "particles": 0,
                    "isotopes": "",
                    "height": np.nan,
                    "width": np.nan,
                    "error": str(exc),
                },
                None,
                None,
            )
    if not read:
        return
    fields = [
        (src, read[src.name] if src.name in read else _reread(src, p.channels))
        for src in chunk
        if src.name in read or src.name in done
    ]
    fields = [(src, f) for src, f in fields if f is not None]
    probs = det.probabilities([f.total() for _, f in fields])
    for (src, f), prob in zip(fields, probs):
        if src.name in done:
            continue
        lab = det.labels(prob)
        t = measure_particle_isotopes(f, lab, p.background, p.grow, p.ring)
        t, lab = significant(t, lab, p.min_significance)
        t.insert(0, "field", f.name)
        row = {
            "field": f.name,
            "status": "ok",
            "particles": len(t),
            "isotopes": " ".join(f.isotopes),
            "height": f.shape[0],
            "width": f.shape[1],
            "error": "",
        }
        yield src, row, t, lab


def _chunk_task(chunk_done: tuple, state: tuple, params: SimsParams | None):
    """Run :func:`measure_chunk` in a Dask worker, its detector made once per process.

    See :mod:`particleseg.distributed`.
    """

    def measure():
        key = ("sims", str(state[0]), json.dumps(state[1], sort_keys=True, default=str), repr(params))
        det = worker_cached(key, lambda: FieldDetector(worker_bundle(state), params))
        return list(measure_chunk(det, *chunk_done))

    return _noted(measure, catch=())


def _show_notes(notes) -> None:
    for message, category, filename, lineno in notes:
        warnings.warn_explicit(message, category, filename, lineno)


def _reread(src: FieldSource, channels) -> Field | None:
    """Read a field done earlier again, for the network batch (None if it cannot be read now)."""
    try:
        return read_field(src, channels)
    except ParticlesegError:
        return None


def write_tiff_labels(path: Path, labels: np.ndarray) -> None:
    """Write a field's labels as 16-bit ``labels/FIELD_labels.tif``."""
    write_tiff(path, labels.astype(np.uint16), overwrite=True)


def _tables(sources: Sequence[FieldSource], results: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make ``particles.csv`` and ``fields.csv`` of the fields in ``results``.

    The fields are in the order of ``sources``; those without results are listed as
    ``not started``.
    """
    rows, tables = [], []
    for src in sources:
        row, table = results.get(
            src.name,
            (
                {
                    "field": src.name,
                    "status": "not started",
                    "particles": 0,
                    "isotopes": "",
                    "height": np.nan,
                    "width": np.nan,
                    "error": "",
                },
                None,
            ),
        )
        rows.append(row)
        if table is not None:
            tables.append(table)
    return concat_particles(tables), pd.DataFrame(rows, columns=FIELD_COLUMNS)


def _field_pixels(src: FieldSource) -> int:
    """Pixels of one channel of a field, from its first file's header (0 if unreadable)."""
    try:
        return image_pixels(src.paths[0]) // (1 if src.stack is None else max(1, len(ISOTOPES)))
    except Exception:  # noqa: BLE001 - an unreadable field is reported when it is read
        return 0
