"""SIMS particle screening: reading fields, ratios with Poisson errors, batch runs, simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import tiny_sims_bundle
from particleseg import sims
from particleseg.errors import InputError, OutputExistsError
from particleseg.sims import REFERENCE_MATERIALS, SimsSettings, simulate_field, simulate_fields, write_field

SMALL = SimsSettings(shape=(64, 64), particles=(1, 4), diameter=(5.0, 10.0))


def _field(sim, name="f"):
    return sims.Field(name, {iso: sim.counts[i] for i, iso in enumerate(sim.isotopes)})


def threshold_predictor(level: float = 0.3):
    """Make a stand-in for a trained network.

    Its particle probability is the local contrast of the smoothed detection input.
    Deterministic, so the batch machinery and post-processing can be tested without training.
    """

    def predict(batch):
        x = np.asarray(batch, np.float32)[..., 0]
        sm = np.stack([ndi.gaussian_filter(b, 1.0) - ndi.median_filter(b, 21) for b in x])
        p = 1 / (1 + np.exp(-(sm - level) * 30))
        return p[..., None].astype(np.float32)

    return predict


@pytest.fixture(scope="module")
def fcn_bundle(tmp_path_factory):
    """Make an untrained tiny FCN bundle with the SIMS metadata.

    Its network is replaced by a stand-in predictor where detection quality matters.
    """
    return tiny_sims_bundle(tmp_path_factory.mktemp("b"))


# ------------------------------------------------------------------------------------------
# names and reading


@pytest.mark.parametrize(
    "name,iso",
    [
        ("235U+", "235U"),
        ("U238", "238U"),
        ("U-234", "234U"),
        ("238UH+", "238U1H"),
        ("238U1H", "238U1H"),
        ("238 U 1H+", "238U1H"),
        ("236u", "236U"),
        ("16O", None),
        ("237U", None),
        ("SE", None),
    ],
)
def test_canonical_isotope(name, iso):
    assert sims.canonical_isotope(name) == iso


def test_read_stack_names_from_imagej_labels_and_option(tmp_path):
    sim = simulate_field(1, SMALL)
    write_field(sim, tmp_path, "a")
    f = sims.read_field(tmp_path / "fields" / "a.tif")
    assert f.isotopes == list(sims.ISOTOPES)
    np.testing.assert_array_equal(f.counts["235U"], sim.counts[sim.isotopes.index("235U")])
    # a plain stack without names needs --channels, in order
    tifffile.imwrite(tmp_path / "plain.tif", sim.counts[[1, 3]].astype(np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match=r"plain\.tif: channel names unknown.*--channels"):
        sims.read_field(tmp_path / "plain.tif")
    f = sims.read_field(tmp_path / "plain.tif", ["235U+", "238U+"])
    np.testing.assert_array_equal(f.counts["238U"], sim.counts[3])
    with pytest.raises(InputError, match=r"has 2 channels but 3 channel names"):
        sims.read_field(tmp_path / "plain.tif", ["235U", "238U", "234U"])
    with pytest.raises(InputError, match=r"lacks the 238U channel"):
        sims.read_field(tmp_path / "plain.tif", ["235U", "16O"])
    with pytest.raises(InputError, match=r"appears twice"):
        sims.read_field(tmp_path / "plain.tif", ["235U", "U235"])
    tifffile.imwrite(tmp_path / "one.tif", sim.counts[0].astype(np.uint16))
    with pytest.raises(InputError, match=r"one\.tif: has one channel"):
        sims.read_field(tmp_path / "one.tif")


def test_per_isotope_files_by_pattern_and_mismatches(tmp_path):
    sim = simulate_field(2, SMALL)
    d = tmp_path / "d"
    d.mkdir()
    for i, iso in enumerate(sim.isotopes):
        tifffile.imwrite(d / f"run7-{iso}+_fieldA.tif", sim.counts[i].astype(np.uint16))
    srcs = sims.find_fields(d, "run7-{isotope}_{field}.tif")
    assert [s.name for s in srcs] == ["fieldA"] and set(srcs[0].files) == set(sims.ISOTOPES)
    f = sims.read_field(srcs[0])
    np.testing.assert_array_equal(f.counts["238U1H"], sim.counts[4])
    # missing 238U, and images of different sizes
    (d / "run7-238U+_fieldA.tif").unlink()
    with pytest.raises(InputError, match=r"fieldA.*lacks the 238U image"):
        sims.read_field(sims.find_fields(d, "run7-{isotope}_{field}.tif")[0])
    tifffile.imwrite(d / "run7-238U+_fieldA.tif", np.zeros((32, 64), np.uint16))
    with pytest.raises(InputError, match=r"differ in size \(.*238U 32x64"):
        sims.read_field(sims.find_fields(d, "run7-{isotope}_{field}.tif")[0])
    # the default pattern {field}_{isotope}; other files are stacks
    e = tmp_path / "e"
    write_field(sim, e, "g7", layout="files")
    write_field(sim, e, "h8", layout="stack")
    names = {s.name: s for s in sims.find_fields(e / "fields")}
    assert set(names) == {"g7", "h8"} and names["g7"].stack is None and names["h8"].stack is not None
    with pytest.raises(InputError, match=r"needs both \{field\} and \{isotope\}"):
        sims.find_fields(e / "fields", "{field}.tif")


# ------------------------------------------------------------------------------------------
# measurement


def test_hand_placed_particle_ratios_within_poisson_error():
    """A U500 particle on a strong, varying background: every ratio within 3 sigma.

    Over many fields the pulls (R - R_true) / sigma have mean ~0 and spread ~1, so the counting
    uncertainties are right (neither too small nor too large).
    """
    mat = REFERENCE_MATERIALS["U500"]
    pulls = {iso: [] for iso in sims.RATIO_ISOTOPES}
    for seed in range(40):
        sim = simulate_field(
            seed,
            SimsSettings(shape=(64, 64), spikes=0),
            particles=[{"y": 30, "x": 33, "diameter": 9, "material": mat, "rate_238": 40.0}],
            background_238=1.5,
        )
        t = sims.measure_particle_isotopes(_field(sim), sim.labels)
        assert len(t) == 1
        for iso in sims.RATIO_ISOTOPES:
            rc, ec = sims.ratio_columns(iso)
            pulls[iso].append((t[rc].iloc[0] - mat.ratio(iso)) / t[ec].iloc[0])
    for iso in ("235U", "234U", "238U1H"):
        p = np.array(pulls[iso])
        assert np.all(np.abs(p) < 4), (iso, p)
        assert abs(p.mean()) < 0.5, (iso, p.mean())
        assert 0.6 < p.std() < 1.5, (iso, p.std())
    # the 235U/238U ratio of U500 (about 1) is measured to a few per cent
    assert np.mean(np.abs(pulls["235U"])) < 1.5


def test_background_subtraction_removes_bias():
    """The annulus background removes the bias of the minor isotopes of a faint NU particle.

    Without subtraction the minor isotopes of a faint natural-uranium particle are biased high
    by the background; with the annulus they are not.
    """
    mat = REFERENCE_MATERIALS["NU"]
    raw, sub = [], []
    for seed in range(15):
        sim = simulate_field(
            seed,
            SimsSettings(shape=(64, 64), spikes=0, background_variation=0.0),
            particles=[{"y": 32, "x": 32, "diameter": 8, "material": mat, "rate_238": 30.0}],
            background_238=2.0,
        )
        f = _field(sim)
        rc = sims.ratio_columns("235U")[0]
        raw.append(sims.measure_particle_isotopes(f, sim.labels, background="none")[rc].iloc[0])
        sub.append(sims.measure_particle_isotopes(f, sim.labels, background="annulus")[rc].iloc[0])
    assert np.mean(raw) > 1.3 * mat.ratio("235U")
    assert abs(np.mean(sub) / mat.ratio("235U") - 1) < 0.2


def test_ratio_uncertainty_formula():
    r, e = sims.counts._ratio(
        np.array([10.0, 0.0, 5.0]), np.array([100.0, 50.0, 0.0]), np.sqrt([10.0, 1.0, 5.0]), np.sqrt([100.0, 50.0, 1.0])
    )
    assert r[0] == pytest.approx(0.1) and e[0] == pytest.approx(0.1 * np.sqrt(1 / 10 + 1 / 100))
    assert r[1] == 0 and e[1] == pytest.approx(1 / 50)  # defined also for zero counts
    assert np.isnan(r[2]) and np.isnan(e[2])


# ------------------------------------------------------------------------------------------
# detection and the batch


def test_empty_field_gives_no_particles_and_particle_is_found(fcn_bundle):
    det = sims.FieldDetector(fcn_bundle, predictor=threshold_predictor())
    empty = simulate_field(5, SMALL, n_particles=0, background_238=2.0)
    one = simulate_field(
        6,
        SMALL,
        particles=[{"y": 20, "x": 40, "diameter": 8, "material": "U010", "rate_238": 50.0}],
        background_238=0.5,
    )
    probs = det.probabilities([_field(empty).total(), _field(one).total()])
    assert det.labels(probs[0]).max() == 0
    lab = det.labels(probs[1])
    assert lab.max() == 1
    assert sims.match_particles(lab, one.labels) == {1: 1}


def test_significance_filter_drops_background_blobs_and_keeps_particles():
    # a "detection" on pure background and a real particle in the same field
    sim = simulate_field(
        8, SMALL, particles=[{"y": 40, "x": 40, "diameter": 6, "material": "NU", "rate_238": 20.0}], background_238=1.0
    )
    labels = sim.labels.copy()
    labels[5:9, 5:9] = 2  # a 16 px blob of background
    t = sims.measure_particle_isotopes(_field(sim), labels)
    assert t.loc[t["particle"] == 1, "significance"].iloc[0] > 10
    assert abs(t.loc[t["particle"] == 2, "significance"].iloc[0]) < 4
    kept, lab = sims.significant(t, labels, 5.0)
    assert list(kept["particle"]) == [1]
    assert set(np.unique(lab)) == {0, 1} and (lab == 1).sum() == (labels == 1).sum()
    assert len(sims.significant(t, min_significance=0)) == 2


def test_batched_prediction_equals_one_at_a_time(fcn_bundle):
    rng = np.random.default_rng(0)
    x = rng.random((5, 40, 56)).astype(np.float32)  # not a multiple of the network's grid: padded
    predict = fcn_bundle.predictor()
    a = sims.predict_fields(predict, x, fcn_bundle.network.multiple_of, batch_size=5)
    b = sims.predict_fields(predict, x, fcn_bundle.network.multiple_of, batch_size=1)
    assert a.shape == (5, 40, 56, 1)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_run_fields_batch_outputs_and_bad_field(tmp_path, fcn_bundle):
    truth, _ = simulate_fields(7, tmp_path / "sim", SMALL, seed=3, progress=False)
    tifffile.imwrite(
        tmp_path / "sim" / "fields" / "broken.tif", np.zeros((3, 64, 64), np.uint16), photometric="minisblack"
    )  # unnamed channels
    parts, fields = sims.run_fields(
        tmp_path / "sim" / "fields",
        fcn_bundle,
        tmp_path / "out",
        sims.SimsParams(batch_size=3),
        predictor=threshold_predictor(),
        progress=False,
        save_labels=True,
    )
    assert len(fields) == 8
    bad = fields[fields["status"] == "error"]
    assert list(bad["field"]) == ["broken"] and "channel names unknown" in bad["error"].iloc[0]
    assert (tmp_path / "out" / "ratios.png").stat().st_size > 1000
    csv = pd.read_csv(tmp_path / "out" / "particles.csv")
    for col in ("field", "y", "x", "235U_counts", "238U_net_err", "ratio_235U_238U", "ratio_236U_238U_err"):
        assert col in csv.columns
    ok = fields[fields["status"] == "ok"].set_index("field")["particles"]
    assert ok.sum() == len(csv)
    # fields without true particles give none; most true particles are found
    empty = set(ok.index) - set(truth["field"])
    assert all(ok[f] == 0 for f in empty)
    assert len(csv) >= 0.6 * len(truth)
    with pytest.raises(OutputExistsError, match=r"other settings \(save_labels True -> False\)"):
        sims.run_fields(
            tmp_path / "sim" / "fields", fcn_bundle, tmp_path / "out", predictor=threshold_predictor(), progress=False
        )


def test_score_against_truth_is_perfect_for_true_labels():
    tables, matches, truths = [], [], []
    for i in range(4):
        sim = simulate_field(i + 10, SMALL)
        t = sims.measure_particle_isotopes(_field(sim), sim.labels)
        t.insert(0, "field", f"f{i}")
        tables.append(t)
        tr = sim.truth.copy()
        tr.insert(0, "field", f"f{i}")
        truths.append(tr)
        matches += [
            {"field": f"f{i}", "particle": p, "truth_label": q}
            for p, q in sims.match_particles(sim.labels, sim.labels).items()
        ]
    parts = sims.concat_particles(tables)
    truth = pd.concat(truths, ignore_index=True)
    sc = sims.score_detection(parts, truth, pd.DataFrame(matches))
    assert sc["count_error"] == 0 and sc["recall"] == 1 and sc["precision"] == 1
    assert sc["ratio_distance"] < 0.15


def test_simulator_truth_and_empty_fields():
    s = SimsSettings(shape=(64, 64), empty_fraction=0.5)
    sizes = [len(simulate_field(i, s).truth) for i in range(20)]
    assert 3 <= sizes.count(0) <= 17
    sim = next(simulate_field(i, s) for i in range(20) if len(simulate_field(i, s).truth) >= 2)
    assert sim.labels.max() == len(sim.truth)
    assert set(sim.truth["material"]) <= set(REFERENCE_MATERIALS)
    for _, row in sim.truth.iterrows():
        mat = REFERENCE_MATERIALS[row["material"]]
        assert row["ratio_235U_238U"] == mat.ratio("235U")
        assert (sim.labels == row["label"]).sum() == row["area"]


# ------------------------------------------------------------------------------------------
# the shipped SIMS model (models/sims-fcn, trained on simulated fields only)


@pytest.fixture(scope="module")
def shipped_bundle():
    from particleseg.models import load_bundle

    return load_bundle("sims-fcn")


def test_shipped_bundle_is_installed_and_documented(shipped_bundle):
    from particleseg.cli.sims import DEFAULT_SIMS_MODEL

    meta = shipped_bundle.metadata
    assert DEFAULT_SIMS_MODEL == meta["name"] == "sims-fcn"
    # the simulator as named when the bundle was trained (particleseg.sims_simulate, now particleseg.sims)
    assert meta["training"]["simulator"].startswith("particleseg.sims")
    pp = meta["postprocess"]
    assert 0 < pp["threshold"] < 1 and pp["min_significance"] > 0
    assert pp["threshold"] == meta["metrics"]["sweep_best"]["threshold"]
    assert meta["metrics"]["test"]["recall"] > 0.85


def test_shipped_bundle_finds_particles_and_nothing_in_empty_fields(shipped_bundle):
    det = sims.FieldDetector(shipped_bundle)
    s = SimsSettings(shape=(128, 128))
    spots = [
        {"y": 30, "x": 30, "diameter": 8, "material": "NU", "rate_238": 30.0},
        {"y": 90, "x": 40, "diameter": 6, "material": "U500", "rate_238": 100.0},
        {"y": 60, "x": 100, "diameter": 10, "material": "U010", "rate_238": 10.0},
    ]
    one = simulate_field(21, s, particles=spots, background_238=0.5)
    empties = [simulate_field(30 + i, s, n_particles=0, background_238=bg) for i, bg in enumerate((0.02, 0.3, 2.0))]
    fields = [_field(f) for f in [one, *empties]]
    probs = det.probabilities([f.total() for f in fields])
    lab = det.labels(probs[0])
    t, lab = sims.significant(sims.measure_particle_isotopes(fields[0], lab), lab, det.params.min_significance)
    m = sims.match_particles(lab, one.labels)
    assert len(t) == 3 and sorted(m.values()) == [1, 2, 3]
    t = t.set_index("particle")
    for p, q in m.items():  # each particle's 235U/238U within its counting uncertainty (and 5 %)
        true = REFERENCE_MATERIALS[spots[q - 1]["material"]].ratio("235U")
        assert abs(t.loc[p, "ratio_235U_238U"] - true) < 4 * t.loc[p, "ratio_235U_238U_err"] + 0.05 * true
    for f, prob in zip(fields[1:], probs[1:]):
        lab = det.labels(prob)
        kept = sims.significant(sims.measure_particle_isotopes(f, lab), min_significance=det.params.min_significance)
        assert len(kept) == 0


# ------------------------------------------------------------------------------------------
# command line


def test_cli_simulate_and_run(tmp_path, fcn_bundle, capsys):
    from particleseg.cli import main

    assert (
        main(
            [
                "sims",
                "simulate",
                "--out",
                str(tmp_path / "s"),
                "--fields",
                "3",
                "--size",
                "64",
                "--layout",
                "files",
                "--isotopes",
                "235U,238U",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "s" / "fields").iterdir())[:2] == [
        "field_0000_235U.tif",
        "field_0000_238U.tif",
    ]
    assert (
        main(
            [
                "sims",
                "run",
                str(tmp_path / "s" / "fields"),
                "--model",
                str(fcn_bundle.path),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--threshold",
                "0.9",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "fields/s" in out and (tmp_path / "o" / "particles.csv").exists()
    # a missing channel: one line naming the field, exit status 1
    (tmp_path / "s" / "fields" / "field_0001_238U.tif").unlink()
    assert (
        main(
            [
                "sims",
                "run",
                str(tmp_path / "s" / "fields"),
                "--model",
                str(fcn_bundle.path),
                "--out",
                str(tmp_path / "o2"),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "field_0001" in err and "lacks the 238U image" in err


# ------------------------------------------------------------------------------------------
# resuming (issue 15, item 1)


def _same_run_outputs(a, b, labels=True):
    for name in ("particles.csv", "fields.csv", "ratios.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    if labels:
        names = sorted(p.name for p in (b / "labels").iterdir())
        assert sorted(p.name for p in (a / "labels").iterdir()) == names
        for n in names:
            assert (a / "labels" / n).read_bytes() == (b / "labels" / n).read_bytes(), n


def test_run_fields_resumes_after_an_interruption_and_equals_an_uninterrupted_run(tmp_path, fcn_bundle, monkeypatch):
    """Ctrl-C while the fourth field is measured, then a rerun: the outputs of an uninterrupted run.

    The three finished fields keep their records, fields.csv lists the rest as not started; the
    rerun measures only the others (the network batches formed as before) and its outputs are
    byte-identical to an uninterrupted run's.
    """
    from particleseg.pipeline import RECORD_DIR

    simulate_fields(7, tmp_path / "sim", SMALL, seed=3, progress=False)
    tifffile.imwrite(
        tmp_path / "sim" / "fields" / "broken.tif", np.zeros((3, 64, 64), np.uint16), photometric="minisblack"
    )  # a field that fails, in both runs
    src = tmp_path / "sim" / "fields"
    kw = dict(params=sims.SimsParams(batch_size=3), predictor=threshold_predictor(), progress=False, save_labels=True)
    sims.run_fields(src, fcn_bundle, tmp_path / "ref", **kw)

    measured = []
    real = sims.measure_particle_isotopes

    def measure(fld, *a, **k):
        if len(measured) == 3:
            raise KeyboardInterrupt
        measured.append(fld.name)
        return real(fld, *a, **k)

    monkeypatch.setattr("particleseg.sims.run.measure_particle_isotopes", measure)
    with pytest.raises(KeyboardInterrupt):
        sims.run_fields(src, fcn_bundle, tmp_path / "out", **kw)
    fields = pd.read_csv(tmp_path / "out" / "fields.csv")
    assert sorted((tmp_path / "out" / RECORD_DIR).glob("*.done.json")).__len__() == 3
    assert (fields["status"] == "not started").sum() == 8 - 3 - 1  # broken.tif failed in the first batch
    monkeypatch.setattr("particleseg.sims.run.measure_particle_isotopes", real)

    calls = []
    predict = threshold_predictor()
    parts, fields = sims.run_fields(
        src, fcn_bundle, tmp_path / "out", **{**kw, "predictor": lambda b: calls.append(len(b)) or predict(b)}
    )
    assert fields.attrs["done_earlier"] == 3 and fields.attrs["measured"] == 4
    # the network batches of an uninterrupted run where something is left to do: [0002-0004] (0002 finished,
    # predicted again beside 0003 and 0004 as before) and [0005, 0006]; in [broken, 0000, 0001] only broken.tif
    # (no record: it failed) is left, and it fails again when read
    assert calls == [3, 2]
    _same_run_outputs(tmp_path / "out", tmp_path / "ref")
    # a third run predicts nothing (broken.tif is tried again); other settings, or a changed field,
    # are refused before any work
    calls.clear()
    sims.run_fields(
        src,
        fcn_bundle,
        tmp_path / "out",
        **{**kw, "predictor": lambda b: calls.append(len(b)) or predict(b)},
        plot=False,
    )
    assert calls == []
    _same_run_outputs(tmp_path / "out", tmp_path / "ref")
    with pytest.raises(OutputExistsError, match=r"other settings \(min_area 4 -> 9\).*--overwrite.*and 6 more"):
        sims.run_fields(
            src, fcn_bundle, tmp_path / "out", **{**kw, "params": sims.SimsParams(batch_size=3, min_area=9)}
        )
    first = sorted(src.glob("field_0001*.tif"))[0]
    tifffile.imwrite(first, tifffile.imread(first) + 1, photometric="minisblack")
    with pytest.raises(OutputExistsError, match="changed since its outputs"):
        sims.run_fields(src, fcn_bundle, tmp_path / "out", **kw)
    sims.run_fields(src, fcn_bundle, tmp_path / "out", **kw, overwrite=True, plot=False)


def test_sims_reports_not_made_by_particleseg_are_not_replaced(tmp_path, fcn_bundle):
    simulate_fields(2, tmp_path / "sim", SMALL, seed=1, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fields.csv").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="fields.csv: output exists"):
        sims.run_fields(
            tmp_path / "sim" / "fields", fcn_bundle, tmp_path / "out", predictor=threshold_predictor(), progress=False
        )
    assert (tmp_path / "out" / "fields.csv").read_text() == "mine\n"


def test_cli_sigterm_rolls_back_and_writes_the_reports(tmp_path, fcn_bundle, capsys, monkeypatch):
    """``kill`` (SIGTERM) of ``particleseg sims run`` while a field is measured: exit 130.

    One line on stderr, fields.csv written (the rest not started), the rerun finishes the run.
    """
    import os
    import signal

    from particleseg.cli import main

    simulate_fields(4, tmp_path / "sim", SMALL, seed=2, progress=False)
    real, seen = sims.measure_particle_isotopes, []

    def measure(fld, *a, **k):
        seen.append(fld.name)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(fld, *a, **k)

    monkeypatch.setattr("particleseg.sims.run.measure_particle_isotopes", measure)
    args = [
        "sims",
        "run",
        str(tmp_path / "sim" / "fields"),
        "--model",
        str(fcn_bundle.path),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--batch-size",
        "2",
    ]
    before = signal.getsignal(signal.SIGTERM)
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"particleseg: interrupted; the fields finished so far are in {tmp_path / 'o'} (fields.csv); "
        "run the same command again to go on"
    ]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the CLI's only while it runs
    assert pd.read_csv(tmp_path / "o" / "fields.csv")["status"].tolist() == [
        "ok",
        "not started",
        "not started",
        "not started",
    ]
    monkeypatch.setattr("particleseg.sims.run.measure_particle_isotopes", real)
    assert main(args) == 0
    assert "1 done earlier" in capsys.readouterr().out
