"""Issue 16 item 6: batches on a Dask cluster (``--scheduler local:N`` or ``tcp://HOST:PORT``).

One LocalCluster of two worker processes for the whole file; the command-line runs reach it by
its ``tcp://`` address, as a remote cluster is reached. Each batch (an SEM folder, a SIMS
campaign, a FIB-SEM stack) gives, file by file, what the local run of one item after another
gives; a bad item is reported and the rest finishes; a rerun finds everything done. (Timings:
benchmarks/bench_dask.py.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import disk_images, output_files, tiny_phase_bundle, tiny_sims_bundle
from particleseg import distributed, fibsem, sims
from particleseg.cli import main
from particleseg.errors import InputError
from particleseg.pipeline import SegmentParams, batch_report, segment_files

dask_distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        dask_distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        ) as cluster,
        dask_distributed.Client(cluster) as c,
    ):
        yield c


def _assert_same_files(local: Path, dask: Path) -> None:
    a, b = output_files(local), output_files(dask)
    assert sorted(a) == sorted(b)
    for name in a:
        assert b[name] == a[name], name


def test_scheduler_values_and_errors(monkeypatch, capsys):
    assert distributed.parse_scheduler("local:3") == ("local", 3)
    assert distributed.parse_scheduler("tcp://10.0.0.5:8786") == ("tcp", "tcp://10.0.0.5:8786")
    assert distributed.parse_scheduler("tcp://node-1.cluster:8786")[0] == "tcp"
    for bad in ("local:0", "local", "8786", "tcp://host", "http://host:8786", "tcp://host:99999"):
        with pytest.raises(InputError, match=r"^scheduler: expected local:N .* or tcp://HOST:PORT"):
            distributed.parse_scheduler(bad)
    with pytest.raises(SystemExit):
        main(["segment", "x.tif", "--out", "o", "--scheduler", "local"])
    assert "--scheduler: expected local:N" in capsys.readouterr().err
    assert main(["segment", "x.tif", "--out", "o", "--scheduler", "local:2", "--jobs", "2"]) == 1
    assert capsys.readouterr().err.strip() == (
        "particleseg: error: --jobs sets the worker processes of a local batch, --scheduler a Dask cluster's; give one"
    )
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1.0)
    with pytest.raises(InputError, match=r"^scheduler tcp://127\.0\.0\.1:9: cannot connect .*dask scheduler"):
        with distributed.connect("tcp://127.0.0.1:9"):
            pass


def test_sem_folder_on_the_cluster_equals_the_local_run(tmp_path, threshold_bundle, client, capsys):
    src = tmp_path / "in"
    disk_images(src, 5)
    (src / "broken.tif").write_bytes(b"not a TIFF")
    summary, failures = segment_files(
        [src], tmp_path / "local", threshold_bundle, SegmentParams(jobs=1), progress=False
    )
    assert batch_report(summary) == "0 done earlier, 5 segmented, 1 failed"
    capsys.readouterr()

    args = [
        "segment",
        str(src),
        "--out",
        str(tmp_path / "dask"),
        "--model",
        str(threshold_bundle.path),
        "--quiet",
        "--scheduler",
        client.scheduler.address,
    ]
    assert main(args) == 1  # the broken file, one line; the others finished
    io = capsys.readouterr()
    errors = [line for line in io.err.splitlines() if line.startswith("particleseg: error:")]
    assert errors == [f"particleseg: error: {failures[0][1]}"]
    assert "0 done earlier, 5 segmented, 1 failed" in io.out
    _assert_same_files(tmp_path / "local", tmp_path / "dask")
    # the workers prepared the images (each loaded the model once), this process wrote them
    loaded = client.run(lambda: sum(k[0] == "bundle" for k in distributed._CACHE)).values()
    assert sum(loaded) >= 1 and max(loaded) == 1

    assert main(args) == 1
    assert "5 done earlier, 0 segmented, 1 failed" in capsys.readouterr().out


def test_sims_campaign_on_the_cluster_equals_the_local_run(tmp_path, client):
    from particleseg.sims import SimsSettings, simulate_fields

    bundle = tiny_sims_bundle(tmp_path / "b")
    simulate_fields(
        7,
        tmp_path / "sim",
        SimsSettings(shape=(64, 64), particles=(1, 4), diameter=(5.0, 10.0)),
        seed=3,
        progress=False,
    )
    tifffile.imwrite(
        tmp_path / "sim" / "fields" / "broken.tif", np.zeros((3, 64, 64), np.uint16), photometric="minisblack"
    )  # unnamed channels: one error row
    params = sims.SimsParams(batch_size=3)  # 3 network batches, 3 tasks
    runs = {}
    for where, scheduler in (("local", None), ("dask", client)):
        parts, fields = sims.run_fields(
            tmp_path / "sim" / "fields",
            bundle,
            tmp_path / where,
            params,
            progress=False,
            save_labels=True,
            scheduler=scheduler,
        )
        runs[where] = fields
    fields = runs["dask"]
    assert len(fields) == 8 and fields.attrs["measured"] == 7
    assert list(fields.loc[fields["status"] == "error", "field"]) == ["broken"]
    _assert_same_files(tmp_path / "local", tmp_path / "dask")

    # as if interrupted within the second batch: the rerun on the cluster takes the finished fields
    # from their records and predicts the others in the batches of an uninterrupted run
    for name in [f"field_{i:04d}" for i in range(3, 7)]:
        (tmp_path / "dask" / ".particleseg" / f"{name}.field.done.json").unlink()
        (tmp_path / "dask" / "labels" / f"{name}_labels.tif").unlink()
    parts, fields = sims.run_fields(
        tmp_path / "sim" / "fields",
        bundle,
        tmp_path / "dask",
        params,
        progress=False,
        save_labels=True,
        scheduler=client,
    )
    assert (fields.attrs["done_earlier"], fields.attrs["measured"]) == (3, 4)
    _assert_same_files(tmp_path / "local", tmp_path / "dask")


def test_fibsem_stack_slice_parallel_on_the_cluster_equals_the_local_run(tmp_path, client, capsys):
    from particleseg.fibsem import FibsemSettings, simulate_stack, write_simulation

    bundle = tiny_phase_bundle(tmp_path / "b")
    paths = write_simulation(simulate_stack(0, FibsemSettings(shape=(9, 48, 48))), tmp_path / "sim", layout="slices")
    channels = [paths[k] for k in sorted(paths) if k.startswith("ch")]
    bad = sorted(Path(channels[1]).glob("*.tif"))[4]
    bad.write_bytes(b"not a TIFF")  # slice 4 cannot be read: an error line; its neighbours use a substitute
    for where, scheduler in (("local", None), ("dask", client)):
        with fibsem.open_stack(channels) as stack:
            fibsem.segment_stack(stack, bundle, tmp_path / where, tile=48, progress=False, scheduler=scheduler)
    status = pd.read_csv(tmp_path / "dask" / "slices.csv")
    assert (
        list(status["status"])
        == ["ok"] * 3 + ["ok (context substituted)", "error", "ok (context substituted)"] + ["ok"] * 3
    )
    _assert_same_files(tmp_path / "local", tmp_path / "dask")

    # the command line, by the cluster's address: everything done earlier but the unreadable slice
    args = [
        "fibsem",
        "segment",
        *map(str, channels),
        "--model",
        str(bundle.path),
        "--out",
        str(tmp_path / "dask"),
        "--tile",
        "48",
        "--quiet",
        "--scheduler",
        client.scheduler.address,
    ]
    assert main(args) == 1
    io = capsys.readouterr()
    assert "8 slice(s) segmented (8 from an earlier run)" in io.out and "could not be read" in io.err


def test_a_lost_worker_is_one_line_naming_the_item(client):
    """A worker that dies under a task is one error line naming the item.

    The task's worker process exits, as one killed for memory would; Dask retries it on the
    restarted workers, then gives up, and the cluster goes on with new workers. (Last in this
    file: it restarts the workers.)
    """
    import os

    from particleseg.errors import ParticlesegError

    with pytest.raises(ParticlesegError) as info:
        list(distributed.map_ordered(client, os._exit, [3], names=["img7.tif"]))
    message = str(info.value)
    assert message.startswith("img7.tif: the Dask worker computing it was lost (") and "\n" not in message
    assert message.endswith("out of memory?); run the same command again to go on")
    client.wait_for_workers(2, timeout=60)
    assert sorted(client.submit(abs, -v, pure=False).result() for v in (1, 2)) == [1, 2]
