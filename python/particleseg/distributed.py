"""Batches on a Dask cluster: many images, SIMS fields or FIB-SEM slices on more than one machine.

``--scheduler local:N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes (one
thread each) on this machine; ``--scheduler tcp://HOST:PORT`` connects to a running
``dask scheduler`` whose ``dask worker`` processes may run on other machines. Each image of a
``segment`` batch, each network batch of ``sims run`` fields (``--batch-size`` fields, as in a
local run) and each slice of ``fibsem segment`` is one task. The workers import particleseg and
load the model once per process (:func:`worker_bundle`); they compute and return the results,
and this process (the client) writes them, in the batch's order, with the completion records of
a local run. So the outputs, the resuming of an interrupted batch (finished items are skipped),
the per-item error lines and the progress bar are those of a local run.

The workers read the inputs and the model at the paths this process names (on other machines: a
shared file system, the same paths). Needs ``dask`` and ``distributed``
(``pip install 'particleseg[dask]'``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import re
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import InputError, ParticlesegError

#: ``local:N`` or ``tcp://HOST:PORT``
_LOCAL = re.compile(r"local:(\d+)")
_TCP = re.compile(r"tcp://([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})")
#: seconds to wait for a remote scheduler, and for the first of its workers
CONNECT_TIMEOUT = 20.0


def parse_scheduler(text: str) -> tuple[str, Any]:
    """``local:N`` -> ``("local", N)``; ``tcp://HOST:PORT`` -> ``("tcp", "tcp://HOST:PORT")``.

    Raises
    ------
    InputError
        One line saying what is expected.
    """
    s = str(text).strip()
    m = _LOCAL.fullmatch(s)
    if m and int(m.group(1)) >= 1:
        return "local", int(m.group(1))
    m = _TCP.fullmatch(s)
    if m and 0 < int(m.group(2)) < 65536:
        return "tcp", s
    raise InputError(
        f"scheduler: expected local:N (N >= 1 worker processes on this machine) or tcp://HOST:PORT "
        f"(a running dask scheduler), got {text!r}"
    )


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(
            "scheduler: needs Dask (dask and distributed); install them with pip install 'particleseg[dask]'"
        ) from None
    return distributed


@contextlib.contextmanager
def connect(scheduler) -> Iterator[Any]:
    """Open a :class:`distributed.Client` on ``scheduler``, checked, for the length of the block.

    ``scheduler``: ``local:N``, ``tcp://HOST:PORT``, or a Client (used as it is and left open); a
    local cluster is closed at the end. Before it is used, the workers are checked: at least one
    is there, each imports the particleseg of this process's version; each is told how many
    threads ONNX Runtime may use (the cores of its machine shared by the worker threads on it).
    """
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        _check_workers(scheduler, str(scheduler.scheduler.address))
        yield scheduler
        return
    kind, value = parse_scheduler(scheduler)
    quiet = _quiet_dask_logs()
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet)
        if kind == "local":
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=value,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # (its HTTP server: any free port)
                    silence_logs=logging.ERROR,
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
            where = f"local:{value}"
            # Ctrl-C reaches the whole process group: this process stops the batch and closes the workers
            client.run(_ignore_interrupts)
        else:
            try:
                client = stack.enter_context(distributed.Client(value, timeout=CONNECT_TIMEOUT))
            except (OSError, TimeoutError) as exc:
                raise InputError(
                    f"scheduler {value}: cannot connect ({_detail(exc)}); start one with "
                    f"`dask scheduler` and workers with `dask worker {value}`"
                ) from None
            where = value
        _check_workers(client, where)
        yield client


@contextlib.contextmanager
def _quiet_dask_logs():
    """Dask's informational and shutdown messages off the terminal (errors still show)."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "distributed",
            "distributed.worker",
            "distributed.nanny",
            "distributed.scheduler",
            "distributed.core",
            "distributed.client",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_workers(client, where: str) -> None:
    from . import __version__

    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError):
        raise InputError(
            f"scheduler {where}: no worker joined within {CONNECT_TIMEOUT:g} s; start workers with "
            f"`dask worker {where}`"
        ) from None
    try:
        info = client.run(_worker_info)
    except ImportError as exc:
        raise InputError(
            f"scheduler {where}: a worker cannot import particleseg ({_detail(exc)}); install "
            "particleseg in the workers' Python"
        ) from None
    wrong = {addr: v for addr, (v, _, _) in info.items() if v != __version__}
    if wrong:
        addr, version = next(iter(wrong.items()))
        raise InputError(
            f"scheduler {where}: worker {addr} runs particleseg {version}, this process {__version__}; "
            "install the same version on every worker"
        )
    nthreads = client.nthreads()
    on_host: dict[str, int] = {}
    for addr, (_, host, _) in info.items():
        on_host[host] = on_host.get(host, 0) + int(nthreads.get(addr, 1))
    client.run(_configure_worker, on_host)


def _ignore_interrupts() -> None:
    """Ignore Ctrl-C (SIGINT) in a worker process of a local cluster."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_info() -> tuple[str, str, int]:
    import socket

    from . import __version__
    from .pipeline import usable_cpus

    return __version__, socket.gethostname(), usable_cpus()


def _configure_worker(threads_on_host: dict[str, int]) -> None:
    """Set ONNX Runtime's threads in this worker.

    The cores of this machine are shared by the task threads of all the workers on it (the
    results do not depend on the number of threads).
    """
    import socket

    from .models import export
    from .pipeline import usable_cpus

    export.INTRA_OP_THREADS = max(1, usable_cpus() // max(1, threads_on_host.get(socket.gethostname(), 1)))


def worker_count(client) -> int:
    """Return how many tasks the cluster runs at once (the threads of all its workers)."""
    return max(1, sum(client.nthreads().values()))


# --------------------------------------------------------------------------------------------
# the worker side: one model (and one opened stack) per process


_CACHE: dict[Any, Any] = {}


def bundle_state(bundle) -> tuple:
    """Return what a worker needs to load ``bundle`` (a :class:`~particleseg.models.Bundle`).

    Its path, metadata and source; the network is loaded there, once per process
    (:func:`worker_bundle`).
    """
    return (bundle.path, bundle.metadata, bundle.source)


def worker_bundle(state: tuple):
    """Return the bundle of ``state`` (:func:`bundle_state`), made once per process.

    Its networks, loaded on first use, stay loaded for the next tasks.
    """
    from .models import Bundle

    key = ("bundle", str(state[0]), json.dumps(state[1], sort_keys=True, default=str), state[2])
    if key not in _CACHE:
        _CACHE[key] = Bundle(*state)
    return _CACHE[key]


def worker_cached(key, make: Callable[[], Any], most: int = 4):
    """Return the value made once per process for ``key`` (the last ``most`` of its kind kept)."""
    if key not in _CACHE:
        while sum(1 for k in _CACHE if k[0] == key[0]) >= most:
            del _CACHE[next(k for k in _CACHE if k[0] == key[0])]
        _CACHE[key] = make()
    return _CACHE[key]


def _noted(fn: Callable, *args, catch: tuple = (ParticlesegError, OSError, ValueError)):
    """Run ``fn(*args)`` in a worker: ``(result, None, notes)`` or ``(None, error, notes)``.

    The notes are the warnings it gave, shown by the client with its item.
    """
    result = error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args)
        except catch as exc:
            error = exc
    return result, error, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def _show(notes) -> None:
    for message, category, filename, lineno in notes:
        warnings.warn_explicit(message, category, filename, lineno)


# --------------------------------------------------------------------------------------------
# the client side


def _lost(where: str, exc: BaseException) -> ParticlesegError:
    return ParticlesegError(
        f"{where}: the Dask worker computing it was lost ({_detail(exc)}; out of memory?); "
        "run the same command again to go on"
    )


def map_ordered(
    client,
    fn: Callable,
    items: Sequence,
    args: tuple = (),
    window: int | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run ``fn(item, *args)`` for each item as a task; yield ``(index, result)`` in order.

    At most ``window`` tasks (default: twice the cluster's task threads) are submitted at a time;
    the results come in the order of ``items``, so the client writes in a local run's order while
    the workers compute the next ones. A worker that dies is one :class:`ParticlesegError` naming
    the item (``names``). Stopping the iteration (an error, Ctrl-C) cancels what is left.
    """
    distributed = _import_distributed()
    window = window or 2 * worker_count(client)
    token = f"{getattr(fn, '__name__', 'task')}-{os.getpid()}-{time.monotonic_ns()}"
    pending: deque = deque()
    it = iter(enumerate(items))
    try:
        for i, item in it:
            pending.append((i, client.submit(fn, item, *args, key=f"particleseg-{token}-{i}", pure=False)))
            if len(pending) >= window:
                break
        while pending:
            i, fut = pending.popleft()
            try:
                result = fut.result()
            except (distributed.client.FutureCancelledError, distributed.scheduler.KilledWorker, OSError) as exc:
                raise _lost(names[i] if names is not None else f"item {i}", exc) from None
            nxt = next(it, None)
            if nxt is not None:
                j, item = nxt
                pending.append((j, client.submit(fn, item, *args, key=f"particleseg-{token}-{j}", pure=False)))
            yield i, result
    finally:
        if pending:
            client.cancel([f for _, f in pending], force=True)


# --------------------------------------------------------------------------------------------
# particleseg segment: the images of a folder


_CLIENT: contextvars.ContextVar = contextvars.ContextVar("particleseg_dask_client", default=None)


def segment_files(paths, out_dir, bundle=None, params=None, scheduler=None, **kwargs):
    """Segment many files as :func:`particleseg.pipeline.segment_files` does, on a Dask cluster.

    Each image is prepared (read, segmented, measured, overview rendered) by a task on the
    cluster of ``scheduler`` (see :func:`connect`; None: the local run of ``params.jobs``); this
    process writes the outputs in the batch's order, with the same records, summary, resuming and
    error handling. A batch with one image left to do segments it in this process.
    """
    from . import pipeline

    if scheduler is None:
        return pipeline.segment_files(paths, out_dir, bundle, params, **kwargs)
    with connect(scheduler) as client:
        params = dataclasses.replace(params or pipeline.SegmentParams(), jobs=max(2, worker_count(client)))
        _route_batch_workers()
        token = _CLIENT.set(client)
        try:
            return pipeline.segment_files(paths, out_dir, bundle, params, **kwargs)
        finally:
            _CLIENT.reset(token)


def _route_batch_workers() -> None:
    """Let :func:`particleseg.pipeline.segment_files` prepare its images on a Dask client.

    Where it would start its worker processes, it gets :class:`FileTasks` on the client of this
    context (:data:`_CLIENT`), and its worker processes everywhere else: its ``_Workers``
    becomes that dispatcher.
    """
    from . import pipeline

    if not getattr(pipeline._Workers, "_particleseg_dispatch", False):
        local = pipeline._Workers

        def workers(jobs, bundle, params, out_dir, write_overview, calibration):
            client = _CLIENT.get()
            if client is None:
                return local(jobs, bundle, params, out_dir, write_overview, calibration)
            return FileTasks(client, bundle, params, out_dir, write_overview, calibration)

        workers._particleseg_dispatch = True
        pipeline._Workers = workers


class FileTasks:
    """The images of a ``segment`` batch, prepared by tasks on a Dask cluster.

    The interface of the batch's worker processes (``submit``, ``result``, ``close``): each task
    is :func:`particleseg.pipeline.prepare_file` of one image in a worker, with the bundle loaded
    once per worker; its warnings come back to be shown with its image.
    """

    def __init__(self, client, bundle, params, out_dir: Path, write_overview: bool, calibration: dict):
        self.client = client
        self.state = bundle_state(bundle)
        self.params = dataclasses.replace(params, progress=False, jobs=1)
        self.options = {"write_overview": write_overview, **calibration}
        self.out_dir = out_dir
        self.futures: dict[int, Any] = {}
        self.token = f"{os.getpid()}-{time.monotonic_ns()}"

    def submit(self, key: int, path: Path, overwrite: bool) -> None:
        """Start preparing ``path`` (once per ``key``)."""
        if key not in self.futures:
            self.futures[key] = (
                path,
                self.client.submit(
                    _prepare_task,
                    self.state,
                    path,
                    self.out_dir,
                    self.params,
                    overwrite,
                    self.options,
                    pure=False,
                    key=f"particleseg-prepare-{self.token}-{key}",
                ),
            )

    def result(self, key: int):
        """Return the prepared image of ``key`` (its warnings shown now); raise its error."""
        distributed = _import_distributed()
        path, fut = self.futures.pop(key)
        try:
            item, error, notes = fut.result()
        except (distributed.client.FutureCancelledError, distributed.scheduler.KilledWorker, OSError) as exc:
            raise _lost(str(path), exc) from None
        _show(notes)
        if error is not None:
            raise error
        return item

    def close(self) -> None:
        """Cancel what is not done (the workers drop it)."""
        if self.futures:
            self.client.cancel([f for _, f in self.futures.values()], force=True)
        self.futures.clear()


def _prepare_task(state, path, out_dir, params, overwrite, options):
    from .pipeline import prepare_file

    def prepare():
        t0 = time.perf_counter()
        item = prepare_file(path, out_dir, worker_bundle(state), params, overwrite=overwrite, **options)
        item.seconds = time.perf_counter() - t0
        return item

    return _noted(prepare)
