"""Segmenting the phases of a whole stack, slice by slice, resumably, locally or on a Dask cluster.

:func:`segment_stack` predicts each slice, writes its labels with a completion record as soon as
it is done (so an interrupted run resumes where it stopped), reports bad slices, writes the
volume fractions and assembles the labels into one stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import interrupts
from ..distributed import bundle_state, connect, map_ordered, worker_bundle, worker_cached
from ..errors import InputError, OutputExistsError, ParticlesegError
from ..io import check_output_folder, check_outputs, remove_stale_temporaries, write_atomic, write_csv, write_tiff
from ..models.bundle import model_identity
from ..pipeline import RECORD_DIR, _write_item, input_fingerprint, plan_item
from .inputs import InputBuilder, context_indices, stack_normalization
from .measure import plot_volume_fractions, volume_fractions
from .outputs import _slice_stem, assemble_stack, phase_output_paths, slice_path
from .predict import predict_stack_slice
from .stacks import ArraySource, Stack, stack_files


def run_settings(stack: Stack, bundle, tile: int, overlap: int) -> dict:
    """Everything that decides a slice's labels besides the stack's files.

    That is the model (its bundle and a hash of its metadata), the tiling and, for stacks given
    as arrays (not read from a file, whose content :func:`stack_files` covers), a hash of their
    values. A rerun skips a slice only when these are the same as recorded.
    """
    arrays = [
        hashlib.sha256(np.ascontiguousarray(s.array).data).hexdigest()[:16]
        for s in stack.sources
        if isinstance(s, ArraySource) and not getattr(s, "files", None)
    ]
    return {
        "command": "fibsem segment",
        **model_identity(bundle),
        "tile": int(tile),
        "overlap": int(overlap),
        "n_slices": stack.n_slices,
        "shape": list(stack.shape),
        "arrays_sha256": arrays,
    }


def _plan_slices(stack: Stack, out: Path, zs: Sequence[int], settings: dict, overwrite: bool, name: str) -> dict:
    """Plan each slice: its :class:`~particleseg.pipeline.ItemPlan`.

    Slices whose outputs this run may not replace stop the run before any work, in one line.
    """
    label = " + ".join(s.name for s in stack.sources)
    files = stack_files(stack)
    plans = {
        z: plan_item(
            Path(stack.sources[0].name),
            out,
            settings,
            overwrite,
            outputs={"slice": slice_path(out, z, name)},
            name=f"{label} slice {z}",
            stem=_slice_stem(z, name),
            inputs=files,
        )
        for z in zs
    }
    conflicts = [pl for pl in plans.values() if pl.action == "conflict"]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more slice(s))" if len(conflicts) > 1 else ""
        raise OutputExistsError(conflicts[0].message + more)
    return plans


def segment_stack(
    stack: Stack,
    bundle,
    out_dir: str | os.PathLike,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    slices: Sequence[int] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    on_error: str = "continue",
    assemble: bool = True,
    progress: bool = True,
    name: str = "phases",
    predictor=None,
    memory_limit: int = 1 << 30,
    scheduler=None,
) -> pd.DataFrame:
    """Segment the phases of a stack slice by slice, streaming from disk, resumably.

    Each slice's input (its channels and those of ``k`` neighbours, normalised by percentiles
    of the whole stack) is predicted tile by tile and its labels written at once to
    ``slices/NAME_zNNNNN.tif`` (atomically), then its completion record
    ``.particleseg/NAME_zNNNNN.done.json`` (the fingerprint of the stack's files, the settings,
    its phase counts; the records of :func:`particleseg.pipeline.segment_files`). So finished
    work survives an interruption: a rerun skips the slices done earlier from the same stack
    with the same settings and redoes an interrupted one; the result equals an uninterrupted
    run's. Slices made from another stack or with other settings, and outputs particleseg has no
    record of, stop the run before any work (``overwrite`` redoes everything). ``resume`` is
    kept for old callers: resuming is what every run does.

    A slice that cannot be read is reported in ``slices.csv`` and skipped
    (``on_error="continue"``) or ends the run after the reports are written (``"stop"``); an
    unreadable *neighbour* is replaced by the nearest readable slice of the window and noted.
    Ctrl-C rolls back the slice being written and writes the reports of the finished slices.

    Writes to ``out_dir``: ``slices/``, ``slices.csv`` (status per slice: ``ok``, ``resumed``
    for one done earlier, ``error``), ``volume_fractions.csv`` (fraction of each phase per
    slice, and the stack in the last row), ``volume_fractions.png``, ``run.json`` (model and
    stack) and, with ``assemble``, ``NAME.tif`` (all slices as one ImageJ stack, 0 where a slice
    failed).

    ``scheduler`` (``local:N``, ``tcp://HOST:PORT`` or a :class:`distributed.Client`; see
    :mod:`particleseg.distributed`): each slice is predicted by a task on a Dask cluster (the
    stack opened once per worker, normalised by the percentiles this process computes), and this
    process writes the slices in their order, as above; the outputs are those of a local run.

    Returns
    -------
    DataFrame of volume fractions (rows: slices, then ``stack``).
    """
    if on_error not in ("continue", "stop"):
        raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")
    fib = bundle.metadata.get("fibsem")
    if not fib:
        raise ParticlesegError(
            f"{bundle.path}: not a phase-segmentation bundle (no 'fibsem' section); "
            "train one with particleseg fibsem train"
        )
    k = int(fib["context"])
    classes = list(fib["classes"])
    n_ch = len(fib["channels"])
    if stack.n_channels != n_ch:
        raise InputError(
            f"{stack.sources[0].name}: stack has {stack.n_channels} channel(s) but model {bundle.name!r} "
            f"expects {n_ch} ({', '.join(fib['channels'])}); give one input per channel in that order"
        )
    context_indices(0, stack.n_slices, k)
    zs = list(range(stack.n_slices)) if slices is None else list(slices)
    bad = [z for z in zs if not 0 <= z < stack.n_slices]
    if bad:
        raise InputError(f"slice {bad[0]} is outside the stack (0..{stack.n_slices - 1})")
    out = Path(out_dir)
    paths = phase_output_paths(out, name)
    tile = tile or bundle.tile
    overlap = bundle.overlap if overlap is None else overlap
    overlap = max(0, min(overlap, tile // 2 - 1))  # predict_tiled needs overlap < tile
    run_info = {
        "model": bundle.name,
        "model_path": str(bundle.path),
        "n_slices": stack.n_slices,
        "shape": list(stack.shape),
        "channels": [s.name for s in stack.sources],
        "context": k,
        "classes": classes,
    }
    reports = [paths["fractions"], paths["plot"], paths["status"]] + ([paths["stack"]] if assemble else [])
    if not overwrite and paths["run"].exists():  # a folder this command made: its reports are rewritten
        try:
            prev = json.loads(paths["run"].read_text())
        except (OSError, ValueError):
            prev = {}
        for key in ("n_slices", "shape", "context", "classes"):
            if prev.get(key) != run_info[key]:
                raise OutputExistsError(
                    f"{paths['run']}: the finished slices come from another run ({key} was {prev.get(key)}, "
                    f"now {run_info[key]}); use another --out or --overwrite"
                )
    elif not overwrite:
        check_outputs(reports, False)
    # free space for the slices to do and the assembled stack (8-bit labels)
    check_output_folder(out, (len(zs) + (stack.n_slices if assemble else 0)) * stack.shape[0] * stack.shape[1])
    for folder in (out, out / RECORD_DIR, paths["slices"]):
        remove_stale_temporaries(folder, [q.name for q in reports])
    settings = run_settings(stack, bundle, tile, overlap)
    plans = _plan_slices(stack, out, zs, settings, overwrite, name)
    write_atomic(paths["run"], lambda tmp: tmp.write_text(json.dumps(run_info, indent=2)), overwrite=True)

    counts: dict[int, np.ndarray] = {}
    status: list[dict] = []
    for z in zs:  # done earlier: from the records
        if plans[z].action == "done" and plans[z].row and "counts" in plans[z].row:
            counts[z] = np.asarray(plans[z].row["counts"], np.int64)
            status.append({"slice": z, "status": "resumed", "message": plans[z].row.get("message", "")})
    todo = [z for z in zs if z not in counts]
    stopped = None
    fingerprint = None
    if scheduler is not None and predictor is not None:
        raise InputError(
            "fibsem segment: a predictor of this process cannot run on a Dask cluster; give the bundle only"
        )
    bar = tqdm(total=len(zs), initial=len(counts), desc="slices", unit="slice", disable=not progress)
    cluster = contextlib.ExitStack()
    done: Iterable = ()  # (index in todo, (labels and substitutions, error, seconds)) per slice
    try:
        if todo:
            norm_cfg = bundle.metadata["input"]["normalization"]
            low, high = (
                (norm_cfg.get("low", 1.0), norm_cfg.get("high", 99.8))
                if norm_cfg.get("method") == "percentile"
                else (0.0, 100.0)
            )
            norm = stack_normalization(stack, low, high)
            clip = tuple(norm_cfg["clip"]) if norm_cfg.get("clip") else None
            options = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "memory_limit": memory_limit}
            files = stack_files(stack)
            label = " + ".join(s.name for s in stack.sources)
            if scheduler is None:
                builder = InputBuilder(stack, k, norm, clip)
                predict = predictor or bundle.predictor()
                done = (
                    (i, _noted_local(predict_stack_slice, builder, predict, bundle, z, options, out))
                    for i, z in enumerate(todo)
                )
            else:
                client = cluster.enter_context(connect(scheduler))
                spec = client.scatter((stack, k, norm, clip), broadcast=True, hash=False)
                done = map_ordered(
                    client,
                    _slice_task,
                    todo,
                    (spec, bundle_state(bundle), options, str(out)),
                    names=[f"slice {z}" for z in todo],
                )
        t0 = time.perf_counter()
        for i, (result, exc, seconds) in done:
            z = todo[i]
            sp = slice_path(out, z, name)
            if exc is not None:
                status.append({"slice": z, "status": "error", "message": str(exc)})
                bar.write(f"particleseg: slice {z}: {exc}", file=sys.stderr)
                if on_error == "stop":
                    stopped = (z, exc)
                    break
                bar.update(1)
                t0 = time.perf_counter()
                continue
            labels, subs = result
            c = np.bincount(labels.ravel(), minlength=len(classes) + 1)[: len(classes) + 1]
            msg = "; ".join(f"context slice {a} unreadable, used {b}" for a, b in subs) if subs else ""
            if fingerprint is None:
                fingerprint = input_fingerprint(files)
            t_write = time.perf_counter()
            _write_item(
                sp,
                out,
                {"slice": sp},
                {"slice": lambda p, labels=labels: write_tiff(p, labels, overwrite=True)},
                {"name": f"{label} slice {z}", **fingerprint},
                settings,
                {"counts": [int(v) for v in c], "message": msg},
                stem=_slice_stem(z, name),
            )
            counts[z] = c
            # its seconds: reading, network and writing (in a worker, its computing and the writing here)
            now = time.perf_counter()
            status.append(
                {
                    "slice": z,
                    "status": "ok" if not subs else "ok (context substituted)",
                    "message": msg,
                    "seconds": round(now - t0 if scheduler is None else seconds + now - t_write, 3),
                }
            )
            t0 = now
            bar.update(1)
    finally:
        bar.close()
        cluster.close()
        # the reports cover whatever is finished, also after an interruption
        fractions = volume_fractions(counts, classes)
        order = {z: i for i, z in enumerate(zs)}
        status.sort(key=lambda r: order[r["slice"]])
        write_csv(paths["fractions"], fractions, overwrite=True)
        write_csv(
            paths["status"], pd.DataFrame(status, columns=["slice", "status", "message", "seconds"]), overwrite=True
        )
        plot_volume_fractions(fractions, paths["plot"], overwrite=True)
    if assemble and stopped is None:
        assemble_stack(out, stack.n_slices, stack.shape, name, overwrite=True)
    if stopped is not None:
        z, exc = stopped
        raise InputError(
            f"{exc} -- stopped at slice {z}; {len(counts)} finished slice(s) kept in {paths['slices']}; "
            "rerun the same command to go on once the slice can be read (a changed stack needs "
            "--overwrite), or use --on-error continue"
        )
    return fractions


def _noted_local(fn, *args) -> tuple:
    """Call ``fn(*args)``: ``(result, None, seconds)``, or ``(None, error, seconds)`` for an unreadable slice."""
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except InputError as exc:
        interrupts.check(exc)  # Ctrl-C or kill that a reader turned into this error
        return None, exc, time.perf_counter() - t0


def _slice_task(z: int, spec: tuple, state: tuple, options: dict, out: str) -> tuple:
    """Run :func:`predict_stack_slice` in a Dask worker.

    The stack is opened again from its files when it reaches the worker; its input builder and
    the bundle are made once per process. Returns ``(result, error, seconds)`` as
    :func:`_noted_local`; its warnings are shown by the worker.
    """
    stack, k, norm, clip = spec
    bundle = worker_bundle(state)
    key = ("fibsem-builder", id(stack), k, repr(norm), repr(clip))
    builder = worker_cached(key, lambda: InputBuilder(stack, k, norm, clip), most=2)
    memmap_dir = out if os.path.isdir(out) else None
    return _noted_local(predict_stack_slice, builder, bundle.predictor(), bundle, z, options, memmap_dir)
