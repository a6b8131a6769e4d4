#!/usr/bin/env python
"""Throughput of SIMS screening, ``--batch-size`` fields per network call against one per call.

2500 simulated fields of view (128 x 128, five isotopes) in one run.

Measures (a) the whole ``run_fields`` (reading TIFFs, network, threshold, watershed, counts,
ratios, CSVs and plot) and (b) the network alone (``predict_fields`` on arrays in memory).
The one-at-a-time figures are measured on the first ``--single`` fields (a rate does not need
all 2500).

    nice -n 10 python benchmarks/bench_sims_throughput.py            # shipped sims-fcn, runs/sims-bench

From Python: ``measure(fields=500)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def measure(
    model="sims-fcn",
    workdir=ROOT / "runs" / "sims-bench",
    fields: int = 2500,
    single: int = 200,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Fields per second of ``run_fields`` and of the network alone, batched and one at a time.

    Parameters
    ----------
    model : str or path
        SIMS bundle (default: the shipped ``sims-fcn``).
    workdir : path
        Simulated fields (made once, seed 7) and the runs' outputs go here.
    fields : int
        Fields in the batched run.
    single : int
        Fields run one per network call (a rate does not need all of them).
    batch_size : int
        Fields per network call in the batched runs.

    Returns
    -------
    dict of figures (``run_batched_fields_per_s``, ``run_single_fields_per_s``,
    ``network_batched_fields_per_s``, ``network_single_fields_per_s``, ...).
    """
    from particleseg import sims
    from particleseg.models import load_bundle
    from particleseg.sims import simulate_fields

    work = Path(workdir)
    data = work / f"fields-{fields}"
    if not (data / "truth.csv").exists():
        simulate_fields(fields, data, seed=7, overwrite=True, progress=progress)
    bundle = load_bundle(model)
    sources = sims.find_fields(data / "fields")
    single = min(single, len(sources))
    res = {
        "model": str(bundle.path),
        "fields": len(sources),
        "field_shape": "128x128, 5 isotopes",
        "batch_size": batch_size,
        "single_fields": single,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": os.getloadavg()[0],
    }
    # warm-up (graph tracing of both batch shapes)
    sims.run_fields(
        sources[:batch_size],
        bundle,
        work / "warm",
        sims.SimsParams(batch_size=batch_size),
        overwrite=True,
        progress=False,
        plot=False,
    )
    sims.run_fields(
        sources[:2], bundle, work / "warm", sims.SimsParams(batch_size=1), overwrite=True, progress=False, plot=False
    )

    t0 = time.perf_counter()
    parts, _ = sims.run_fields(
        sources, bundle, work / "batched", sims.SimsParams(batch_size=batch_size), overwrite=True, progress=progress
    )
    res["run_batched_seconds"] = time.perf_counter() - t0
    res["run_batched_fields_per_s"] = len(sources) / res["run_batched_seconds"]
    res["particles"] = len(parts)
    t0 = time.perf_counter()
    sims.run_fields(
        sources[:single], bundle, work / "single", sims.SimsParams(batch_size=1), overwrite=True, progress=progress
    )
    res["run_single_fields_per_s"] = single / (time.perf_counter() - t0)

    # the network alone, on arrays in memory
    totals = [sims.read_field(s).total() for s in sources]
    x = np.stack([sims.detection_input(t) for t in totals])
    predict = bundle.predictor()
    m = bundle.network.multiple_of
    t0 = time.perf_counter()
    sims.predict_fields(predict, x, m, batch_size)
    res["network_batched_fields_per_s"] = len(x) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    sims.predict_fields(predict, x[:single], m, 1)
    res["network_single_fields_per_s"] = single / (time.perf_counter() - t0)
    res["load_average_after"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    """Measure the throughput from the command line; print the figures and write them as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sims-fcn")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "sims-bench"))
    ap.add_argument("--fields", type=int, default=2500)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", metavar="FILE", help="also write the figures here (default WORKDIR/throughput.json)")
    args = ap.parse_args(argv)
    res = measure(args.model, args.workdir, args.fields, args.single, args.batch_size)
    text = json.dumps(res, indent=2)
    print(text)
    out = Path(args.json) if args.json else Path(args.workdir) / "throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp-" + out.name)
    tmp.write_text(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
