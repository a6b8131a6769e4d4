"""The Fiji bridge without Java: option strings, specs, scripts, environment checks, install."""

from __future__ import annotations

import sys
import types

import pytest

from conftest import REPO as ROOT
from particleseg.errors import InputError, OutputExistsError
from particleseg.fiji import environment as env
from particleseg.fiji.options import (
    COMMAND_NAMES,
    SPECS,
    build_specs,
    check_option_keys,
    format_macro_options,
    key_clashes,
    normalize_options,
    parse_crop_rows,
    parse_macro_options,
    parse_range,
    parse_thresholds,
    segment_params,
)


def test_importing_the_bridge_starts_no_java():
    import subprocess

    code = (
        "import sys, particleseg.fiji, particleseg.fiji.options, particleseg.fiji.scripting; "
        "print(any(m in sys.modules for m in ('jpype', 'scyjava', 'imagej', 'keras', 'tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_parse_and_format_macro_options():
    opts = parse_macro_options("model=[my model] threshold=0.5 split area=10-Infinity crop_rows=auto")
    assert opts == {"model": "my model", "threshold": "0.5", "split": True, "area": "10-Infinity", "crop_rows": "auto"}
    assert parse_macro_options(None) == {} and parse_macro_options("   ") == {}
    assert parse_macro_options("Threshold=0.3") == {"threshold": "0.3"}
    assert parse_macro_options(format_macro_options(opts)) == opts
    assert (
        format_macro_options({"a": True, "b": False, "c": None, "d": 0.25, "e": float("inf"), "f": ""})
        == "a d=0.25 e=Infinity f=[]"
    )


def test_normalize_accepts_scijava_booleans_and_refuses_unknown_keys():
    spec = SPECS["Segment Particles..."]
    assert (
        normalize_options(spec, "threshold=0.5 split=true fill_holes=false add imp=sem.tif")
        == "threshold=0.5 split add "
    )
    with pytest.raises(InputError, match='unknown option "treshold" .valid options: model, threshold, split'):
        normalize_options(spec, "treshold=0.5")
    with pytest.raises(InputError, match='"split" is a check box'):
        normalize_options(spec, "split=maybe")
    with pytest.raises(InputError, match='unknown option "min_area" .now "min_size"; valid options'):
        normalize_options(spec, "min_area=5")
    check_option_keys(SPECS["Models..."], {})


def test_no_key_is_read_out_of_another():
    """ImageJ finds key= anywhere not after a letter: area= inside min_area= would clash."""
    assert key_clashes(["area", "min_area", "threshold", "seed_threshold"]) == [
        ("area", "min_area"),
        ("threshold", "seed_threshold"),
    ]
    for spec in SPECS.values():
        assert key_clashes(spec.keys) == [], spec.name


def test_labels_record_as_their_keys():
    for spec in build_specs("m", ["default", "m"], {"threshold": 0.4}).values():
        for f in spec.fields:
            assert f.label.split(" ")[0].lower() == f.key
    assert SPECS["Segment Particles..."].field("threshold").default == 0.5
    assert build_specs(defaults={"threshold": 0.4})["Segment Particles..."].field("threshold").default == 0.4


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10-500", (10.0, 500.0)),
        ("0-Infinity", (None, None)),
        ("0.2-1.00", (0.2, 1.0)),
        ("1e-3-5e-2", (0.001, 0.05)),
        ("5:", (5.0, None)),
        (":7", (None, 7.0)),
        ("10-", (10.0, None)),
    ],
)
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["abc", "5", "9-3", "-", "nan-4"])
def test_parse_range_errors(text):
    with pytest.raises(InputError, match="area"):
        parse_range(text, "area")


def test_crop_rows_and_thresholds():
    assert parse_crop_rows("auto") == "auto" and parse_crop_rows(" 12 ") == 12 and parse_crop_rows("") == "auto"
    with pytest.raises(InputError, match="negative"):
        parse_crop_rows("-1")
    with pytest.raises(InputError, match="number of rows"):
        parse_crop_rows("lots")
    assert parse_thresholds("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_thresholds("0.3, 0.5") == (0.3, 0.5)
    for bad in ("0:1:0", "2", "a,b", ""):
        with pytest.raises(InputError, match="thresholds"):
            parse_thresholds(bad)


def test_segment_params_from_dialog_values():
    spec = SPECS["Segment Particles..."]
    values = {f.key: f.default for f in spec.fields}
    values.update(
        threshold=0.4,
        split=False,
        seed_level=0.6,
        merge_level="0.93",
        split_level=2.0,
        min_size=9,
        intensity_filter="otsu",
        feret_min="5-50",
        circularity="0.5-1",
        solidity="0-0.9",
        crop_rows="12",
        particle_size=20,
    )
    p = segment_params(values)
    assert (p.threshold, p.split, p.seed_level, p.split_level, p.min_size) == (0.4, False, 0.6, 2.0, 9)
    assert p.merge_level == 0.93 and isinstance(p.merge_level, float)  # a macro's text
    assert p.intensity_filter == "otsu" and p.crop_rows == 12 and p.particle_size == 20
    assert p.shape == {"feret_min": (5.0, 50.0), "circularity": (0.5, None), "solidity": (None, 0.9)}
    values.update(
        intensity_filter="none",
        particle_size=0,
        crop_rows="auto",
        feret_min="0-Infinity",
        circularity="0.00-1.00",
        solidity="0-1",
    )
    p = segment_params(values)
    assert p.intensity_filter is None and p.particle_size is None and p.crop_rows == "auto" and p.shape == {}


# ------------------------------------------------------------------------------------------
# the SciJava scripts


def test_committed_scripts_are_generated_from_the_specs(tmp_path):
    from particleseg.fiji.scripting import MENU_FOLDER, write_scripts

    write_scripts(tmp_path)
    generated = sorted(p.name for p in (tmp_path / MENU_FOLDER).glob("*.py"))
    committed = sorted(p.name for p in (ROOT / "fiji-scripts" / MENU_FOLDER).glob("*.py"))
    assert generated == committed == sorted(s.script_name for s in SPECS.values())
    for name in generated:
        assert (tmp_path / MENU_FOLDER / name).read_text() == (
            ROOT / "fiji-scripts" / MENU_FOLDER / name
        ).read_text(), f"{name} is out of date: python -m particleseg.fiji.scripting fiji-scripts"


def test_script_parameters_are_the_macro_keys():
    from particleseg.fiji.scripting import MENU_FOLDER, parse_parameters

    for spec in SPECS.values():
        text = (ROOT / "fiji-scripts" / MENU_FOLDER / spec.script_name).read_text()
        compile(text, spec.script_name, "exec")
        params = parse_parameters(text)
        names = [n for _, n in params]
        assert names == (["imp"] if spec.needs_image else []) + [f.key for f in spec.parameters], spec.name
        types_ = dict((n, t) for t, n in params)
        for f in spec.parameters:
            expected = {
                "number": "Double",
                "int": "Integer",
                "bool": "Boolean",
                "dir": "File",
                "image": "ImagePlus",
            }.get(f.kind, "String")
            assert types_[f.key] == expected, (spec.name, f.key)
    # menu labels: Fiji turns "_" into " " and drops the extension after the last dot
    assert [s.script_name.replace("_", " ")[:-3] for s in SPECS.values()] == list(COMMAND_NAMES)


def test_script_falls_back_to_an_imagej_error_without_particleseg(monkeypatch):
    """Under Jython (classic Fiji) the import fails; the script shows IJ.error, not a trace."""
    from particleseg.fiji.scripting import MENU_FOLDER

    calls = []
    fake_ij = types.ModuleType("ij")
    fake_ij.IJ = types.SimpleNamespace(error=lambda title, msg: calls.append((title, msg)))
    monkeypatch.setitem(sys.modules, "ij", fake_ij)
    monkeypatch.setitem(sys.modules, "particleseg.fiji.scripting", None)  # import fails
    text = (ROOT / "fiji-scripts" / MENU_FOLDER / SPECS["Models..."].script_name).read_text()
    exec(compile(text, "Models....py", "exec"), {"__name__": "__main__"})
    assert calls and calls[0][0] == "Particle Segmentation" and "needs Fiji's Python mode" in calls[0][1]


def test_example_macros_call_only_known_commands_and_keys():
    """The example macros name only known commands and keys, and set no segmentation parameter.

    Left out, each takes the bundle's default.
    """
    import re

    from particleseg.params import PARAMETERS

    macros = list((ROOT / "fiji-scripts" / "Plugins" / "Particle Segmentation" / "Examples").glob("*.ijm"))
    assert len(macros) == 3
    names = {p.name for p in PARAMETERS}
    for ijm in macros:
        text = ijm.read_text()
        for command in re.findall(r'run\("([^"]+)"', text):
            assert command in SPECS, (ijm.name, command)
            call = text[text.index(f'run("{command}"') :]
            call = call[: call.index(");")]
            literal_keys = {k for k in re.findall(r"[\s\"]([a-z_]+)(?==)", call)}
            assert literal_keys <= set(SPECS[command].keys), (ijm.name, literal_keys - set(SPECS[command].keys))
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        assert not {k for k in re.findall(r"([a-z_]+)=", code)} & names, ijm.name


def test_one_vocabulary_for_the_command_line_the_dialogs_and_the_scripts():
    """Every segmentation parameter is the same everywhere; former names still work.

    It has the same name, range and help as a command-line option, a field of Segment Particles...
    and Batch Segment Folder..., a SciJava script parameter, and a SegmentParams field.
    """
    import dataclasses

    from particleseg.cli import build_parser
    from particleseg.cli.segment import params_from_args
    from particleseg.params import PARAMETERS
    from particleseg.pipeline import SegmentParams

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["segment"]
    options = {o: a for a in sub._actions for o in a.option_strings}
    fields = {f.name for f in dataclasses.fields(SegmentParams)}
    for p in PARAMETERS:
        if p.cli:
            assert options[p.option].dest == p.name and p.help in options[p.option].help, p.name
        if p.kind != "range":
            assert p.name in fields, p.name
        for command in ("Segment Particles...", "Batch Segment Folder..."):
            if p.fiji:
                f = SPECS[command].field(p.name)
                assert (f.kind, f.help, f.minimum, f.maximum) == (p.kind, p.help, p.minimum, p.maximum), p.name
    args = parser.parse_args(
        [
            "segment",
            "x.tif",
            "--out",
            "o",
            "--seed-threshold",
            "0.3",
            "--min-area",
            "5",
            "--keep-border",
            "--area",
            "10:",
            "--circularity",
            "0.5-1",
            "--no-split",
            "--classifier-threshold",
            "0.7",
            "--split-level",
            "2",
        ]
    )
    p = params_from_args(args)
    assert (p.seed_level, p.min_size, p.exclude_border, p.split, p.min_score, p.split_level) == (
        0.3,
        5,
        False,
        False,
        0.7,
        2.0,
    )
    assert p.shape == {"area": (10.0, None), "circularity": (0.5, None)}
    assert segment_params({"seed_level": 0.3, "min_size": 5, "threshold": 0.4, "area": "10-Infinity"}).shape == {
        "area": (10.0, None)
    }
    old = SegmentParams(seed_threshold=0.3, h=2.0, min_area=5, classifier_threshold=0.7)
    assert (old.seed_level, old.split_level, old.min_size, old.min_score) == (0.3, 2.0, 5, 0.7)
    assert (old.seed_threshold, old.h, old.min_area, old.classifier_threshold) == (0.3, 2.0, 5, 0.7)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seed-depth", "2", "argument --seed-depth: must be between 0 and 1, got 2"),
        ("--threshold", "-0.1", "argument --threshold: must be between 0 and 1, got -0.1"),
        ("--min-size", "-3", "argument --min-size: must be at least 0, got -3"),
        ("--seed-depth", "deep", "argument --seed-depth: invalid float value: 'deep'"),
    ],
)
def test_a_number_outside_its_range_is_one_line_on_the_command_line(capsys, option, value, message):
    """The command line checks a number against its parameter's range, as the Fiji dialogs do."""
    from particleseg.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["segment", "x.tif", "--out", "o", option, value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"particleseg segment: error: {message}"


def test_dialog_defaults_and_labels_come_from_the_bundle_and_the_image():
    from particleseg.models import load_bundle
    from particleseg.params import bundle_defaults

    bundle = load_bundle("default")
    seed, conf = bundle.postprocess["seed_threshold"], bundle.postprocess["min_confidence"]
    assert (seed, conf) != (0.5, 0.0)  # the shipped bundle's values differ from the generic defaults
    d = bundle_defaults(bundle)
    assert d["seed_level"] == seed and d["min_confidence"] == conf
    spec = build_specs(defaults=d)["Segment Particles..."]
    assert spec.field("seed_level").default == seed and spec.field("min_confidence").default == conf
    assert (
        spec.field("area").label_for("nm") == "Area (nm²)"
        and spec.field("feret_min").label_for("µm") == "Feret_min (µm)"
    )
    assert (
        spec.field("area").label_for("px") == "Area (px²)" and spec.field("min_size").label_for("nm") == "Min_size (px)"
    )
    main = [f.key for f in spec.fields if not f.advanced]
    assert len(main) <= 13 and {"min_confidence", "min_score"} <= {f.key for f in spec.fields if f.advanced}


def test_recorded_options_write_every_parameter_and_unchecked_default_boxes():
    from particleseg.fiji.options import recorded_options

    spec = SPECS["Segment Particles..."]
    values = {f.key: f.default for f in spec.fields}
    values.update(split=False, threshold=0.45, min_size=4, histogram=False, advanced=True)
    rec = dict(recorded_options(spec, values))
    assert (
        rec["split"] == "false"
        and rec["threshold"] == "0.45"
        and rec["min_size"] == "4"
        and rec["exclude_border"] is None
    )
    assert "advanced" not in rec and rec["histogram"] == "false" and rec["area"] == "0-Infinity"


# ------------------------------------------------------------------------------------------
# environment


def test_find_java_errors_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojdk"))
    with pytest.raises(env.FijiError, match="nojdk: JAVA_HOME does not contain bin/java"):
        env.find_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(env.FijiError, match="^Java not found: no JAVA_HOME and no java on the PATH"):
        env.find_java()
    # a Fiji's bundled Java is used before the PATH
    java = tmp_path / "Fiji.app" / "java" / "linux-x64" / "zulu21" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("")
    assert env.find_java(tmp_path / "Fiji.app") == java.parent.parent


def test_java_version_from_release_file(tmp_path):
    (tmp_path / "release").write_text('JAVA_VERSION="17.0.15"\n')
    assert env.java_major_version(tmp_path) == 17
    (tmp_path / "release").write_text('JAVA_VERSION="1.8.0_402"\n')
    assert env.java_major_version(tmp_path) == 8
    assert env.java_major_version(tmp_path / "none") is None


def test_no_display_without_xvfb(monkeypatch):
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    with pytest.raises(env.FijiError, match="^no display: DISPLAY is not set and Xvfb is not installed"):
        env.VirtualDisplay()


@pytest.mark.skipif(not __import__("shutil").which("Xvfb"), reason="needs Xvfb (apt-get install xvfb)")
def test_the_private_display_outlives_the_thread_that_started_it_and_ends_with_the_process():
    """Linux's parent-death signal follows the starting *thread*: Xvfb must not die with it.

    (Started from a thread, it died when the thread ended and left DISPLAY naming a dead server,
    on which napari's canvas and AWT fail.) And one that ended anyway is replaced on the next call.
    """
    import os
    import subprocess
    import time

    code = (
        "import os, threading, time\n"
        "from particleseg.fiji import environment as env\n"
        "t = threading.Thread(target=env.ensure_display); t.start(); t.join(); time.sleep(1)\n"
        "d = env.virtual_display()\n"
        "print(d.process.pid, d.process.poll() is None, os.environ['DISPLAY'] == d.display)\n"
        "d.process.kill(); d.process.wait()\n"  # ended from outside: the next call starts another
        "print(env.ensure_display() == os.environ['DISPLAY'] == env.virtual_display().display,"
        " env.virtual_display().process.poll() is None, env.virtual_display().process.pid)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    r = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _, alive, named, renamed, restarted, pid = r.stdout.split()
    assert (alive, named) == ("True", "True")  # alive after its thread ended, and DISPLAY names it
    assert (renamed, restarted) == ("True", "True")
    deadline = time.time() + 10
    while time.time() < deadline and _state(pid) != "Z":
        time.sleep(0.1)
    assert _state(pid) == "Z"  # the second ended with the process (gone or a zombie)


def _state(pid: str) -> str:
    """Return the process's state letter ("Z" also when it is gone)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_imagej_and_fiji_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("PARTICLESEG_IJ_JAR", raising=False)
    with pytest.raises(env.FijiError, match="nope.jar: ImageJ jar not found"):
        env.find_ij_jar(tmp_path / "nope.jar")
    bad = tmp_path / "bad.jar"
    bad.write_text("not a zip")
    with pytest.raises(env.FijiError, match="bad.jar: not a jar file"):
        env.check_ij_jar(bad)
    with pytest.raises(env.FijiError, match="Fiji folder not found"):
        env.check_fiji_dir(tmp_path / "Fiji.app")
    (tmp_path / "Fiji.app" / "jars").mkdir(parents=True)
    with pytest.raises(env.FijiError, match="no jars/imagej-legacy"):
        env.check_fiji_dir(tmp_path / "Fiji.app")
    (tmp_path / "Fiji.app" / "jars" / "imagej-legacy-2.0.jar").write_text("")
    assert env.check_fiji_dir(tmp_path / "Fiji.app") == (tmp_path / "Fiji.app").resolve()
    assert env.is_endpoint("sc.fiji:fiji") and env.is_endpoint("net.imagej:imagej:2.14.0")
    assert not env.is_endpoint(str(tmp_path / "Fiji.app")) and not env.is_endpoint("C:\\Fiji.app")


def test_start_fiji_passes_folder_and_mode_to_pyimagej(monkeypatch, tmp_path):
    """The pyimagej call itself, with pyimagej replaced (no Fiji can be downloaded here)."""
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    (fiji / "jars" / "imagej-legacy-2.0.jar").write_text("")
    calls = {}

    class Legacy:
        def isActive(self):
            return True

    def init(target, mode):
        calls["init"] = (target, mode)
        gateway = types.SimpleNamespace(legacy=Legacy())
        for cb in calls.get("callbacks", []):
            cb(gateway)
        return gateway

    fake = types.ModuleType("imagej")
    fake.init = init
    fake.when_imagej_starts = lambda cb: calls.setdefault("callbacks", []).append(cb)
    monkeypatch.setitem(sys.modules, "imagej", fake)
    monkeypatch.setattr(env, "jvm_started", lambda: False)
    monkeypatch.setattr(env, "configure_java", lambda fiji_dir=None, fetch="never": calls.setdefault("fetch", fetch))
    monkeypatch.setattr(env, "_use_local_imglyb", lambda d: None)
    started = []
    gw = env.start_fiji(fiji, "headless", on_start=started.append)
    assert calls["init"] == (str(fiji.resolve()), "headless") and started == [gw] and calls["fetch"] == "auto"
    gw = env.start_fiji("sc.fiji:fiji", "headless")
    assert calls["init"] == ("sc.fiji:fiji", "headless")
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(env.FijiError, match="gui mode needs a desktop"):
        env.start_fiji(fiji, "gui")
    with pytest.raises(env.FijiError, match="unknown mode"):
        env.start_fiji(fiji, "batch")

    def failing(target, mode):
        raise RuntimeError("Failed to create a JVM with the requested environment.")

    fake.init = failing
    with pytest.raises(
        env.FijiError, match=r"Fiji.app: cannot start Fiji through pyimagej from .*Fiji.app \(Failed to create a JVM"
    ):
        env.start_fiji(fiji, "headless")
    fake.init = lambda target, mode: types.SimpleNamespace(legacy=None)
    with pytest.raises(env.FijiError, match="without its ImageJ 1.x layer"):
        env.start_fiji(fiji, "headless")


def test_java_exception_class_is_dropped_from_messages():
    assert env._first_line(Exception("java.awt.AWTError: Can't connect to X11\n\tat x")) == "Can't connect to X11"
    assert env._first_line(Exception("")) == "Exception"


# ------------------------------------------------------------------------------------------
# install and the command line


def test_install_copies_scripts_and_refuses_to_clobber(tmp_path):
    from particleseg.fiji.install import install

    fiji = tmp_path / "Fiji.app"
    with pytest.raises(InputError, match="Fiji folder not found"):
        install(fiji)
    (fiji / "jars").mkdir(parents=True)
    copied, same = install(fiji, env=True)
    menu = fiji / "scripts" / "Plugins" / "Particle Segmentation"
    assert (menu / "Segment_Particles....py").is_file() and (menu / "Examples" / "Segment_Folder.ijm").is_file()
    yml = (fiji / "config" / "environment.yml").read_text()
    assert f"particleseg[tf,fiji] @ {ROOT.resolve().as_uri()}" in yml and "-e ." not in yml
    assert len(copied) == len(list((ROOT / "fiji-scripts").rglob("*.*"))) + 1 and same == []
    copied, same = install(fiji, env=True)
    assert copied == [] and len(same) > 0
    (menu / "Models....py").write_text("# edited\n")
    with pytest.raises(OutputExistsError, match="Models....py: exists and differs; use --overwrite"):
        install(fiji)
    copied, _ = install(fiji, overwrite=True)
    assert copied == [menu / "Models....py"]


def test_run_macro_options_after_the_macro_file(tmp_path):
    import argparse

    from particleseg.cli import build_parser
    from particleseg.cli.fiji import _split_remainder
    from particleseg.fiji.batch import format_arguments

    args = build_parser().parse_args(
        ["fiji", "run-macro", "m.ijm", "--ij-jar", "J", "input=/a b", "--input", "D", "t=1"]
    )
    _split_remainder(args)
    assert (args.macro, args.ij_jar, args.input, args.args) == ("m.ijm", "J", "D", ["input=/a b", "t=1"])
    assert format_arguments(args.args) == "input=[/a b] t=1"
    args = build_parser().parse_args(["fiji", "run-macro", "--fiji", "F", "m.ijm", "x=1"])
    _split_remainder(args)
    assert (args.fiji, args.args) == ("F", ["x=1"])
    args = build_parser().parse_args(["fiji", "run-macro", "m.ijm", "--fiji", "F", "--ij-jar", "J"])
    with pytest.raises(env.FijiError, match="either --fiji or --ij-jar"):
        _split_remainder(args)
    args = build_parser().parse_args(["fiji", "run-macro", "m.ijm", "--bogus"])
    with pytest.raises(InputError, match="--bogus: unknown option"):
        _split_remainder(args)
    assert isinstance(args, argparse.Namespace)
