"""Electron-microscopy formats (particleseg.formats through particleseg.io).

MRC written by mrcfile, OME-Zarr written with zarr (NGFF 0.4 and 0.5, 2D and volumes), EMD written
by RosettaSciIO, a Gatan DM3 file, OME-TIFF calibration written by tifffile, Hitachi and JEOL
sidecar files, and bad files reported in one line naming them.
"""

import struct

import numpy as np
import pytest

from particleseg import formats
from particleseg.errors import InputError
from particleseg.io import Calibration, list_images, read_calibration, read_image


def _image(shape=(64, 80), seed=0):
    from conftest import draw_disks

    img, _ = draw_disks(shape, [(20, 20, 8), (40, 55, 10)], seed=seed)
    return img


# --------------------------------------------------------------------------------------------
# MRC (mrcfile)


@pytest.fixture
def mrc_2d(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / "grid.mrc"
    with mrcfile.new(path) as m:
        m.set_data(_image().astype(np.float32))
        m.voxel_size = 25.0  # Å
    return path


def test_mrc_image_with_its_pixel_size(mrc_2d):
    image, cal = read_image(mrc_2d)
    assert image.shape == (64, 80) and image.dtype == np.float32
    np.testing.assert_array_equal(image, _image())
    assert cal == Calibration(2.5, "nm")
    assert read_calibration(mrc_2d) == (Calibration(2.5, "nm"), "MRC")


def test_mrc_volume_has_its_slice_spacing(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / "tomo.rec"
    vol = np.stack([_image(seed=i) for i in range(4)]).astype(np.int16)
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = (10.0, 10.0, 30.0)  # x, y, z in Å
    image, cal = read_image(path)
    assert image.shape == (4, 64, 80) and cal == Calibration(1.0, "nm")
    assert formats.z_spacing(path) == pytest.approx(3.0)


def test_mrc_without_voxel_size_is_uncalibrated_and_non_square_voxels_are_named(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    plain = tmp_path / "plain.mrc"
    with mrcfile.new(plain) as m:
        m.set_data(_image().astype(np.float32))
    assert read_image(plain)[1] == Calibration()
    skew = tmp_path / "skew.mrc"
    with mrcfile.new(skew) as m:
        m.set_data(_image().astype(np.float32))
        m.voxel_size = (10.0, 20.0, 10.0)
    with pytest.raises(InputError, match=r"skew\.mrc: pixels are not square"):
        read_image(skew)
    assert read_image(skew, allow_nonsquare=True)[0].shape == (64, 80)


# --------------------------------------------------------------------------------------------
# OME-Zarr (zarr, NGFF metadata)


def _ome_zarr(path, data, scale, unit="micrometer", version="0.4"):
    zarr = pytest.importorskip("zarr")
    names = "zyx"[-data.ndim :]
    multiscales = [
        {
            "version": version,
            "name": path.stem,
            "axes": [{"name": n, "type": "space", "unit": unit} for n in names],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2 * s for s in scale]}]},
            ],
        }
    ]
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (32, 32))
    group.create_array("1", data=data[..., ::2, ::2], chunks=(1,) * (data.ndim - 2) + (32, 32))
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_image_reads_the_full_resolution_with_its_scale(tmp_path, version):
    path = _ome_zarr(tmp_path / "sem.ome.zarr", _image().astype(np.uint16), (0.005, 0.005), version=version)
    image, cal = read_image(path)
    np.testing.assert_array_equal(image, _image())
    assert cal == Calibration(0.005, "µm")
    assert read_calibration(path) == (Calibration(0.005, "µm"), "OME-Zarr")


def test_ome_zarr_volume_for_fibsem_and_its_z_spacing(tmp_path):
    vol = np.stack([_image(seed=i) for i in range(3)]).astype(np.uint8)
    path = _ome_zarr(tmp_path / "fib.zarr", vol, (20.0, 5.0, 5.0), unit="nanometer")
    image, cal = read_image(path)
    assert image.shape == (3, 64, 80) and cal == Calibration(5.0, "nm")
    assert formats.z_spacing(path) == pytest.approx(20.0)


def test_a_folder_lists_zarr_stores_and_em_files_as_images_and_a_store_is_one_image(tmp_path, mrc_2d):
    store = _ome_zarr(tmp_path / "b.ome.zarr", _image().astype(np.uint8), (1.0, 1.0))
    (tmp_path / "notes.txt").write_text("x")
    assert list_images([tmp_path]) == [store, mrc_2d]
    assert list_images([store]) == [store]


def test_zarr_without_ome_metadata_is_named(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("0", data=_image())
    with pytest.raises(InputError, match=r"plain\.zarr: not an OME-Zarr image"):
        read_image(tmp_path / "plain.zarr")


# --------------------------------------------------------------------------------------------
# EMD and Gatan DM (RosettaSciIO)


def test_emd_written_by_rosettasciio(tmp_path):
    emd = pytest.importorskip("rsciio.emd")
    img = _image().astype(np.float32)
    axes = [
        {"name": n, "size": s, "scale": 0.25, "units": "nm", "offset": 0.0, "navigate": False}
        for n, s in zip("yx", img.shape)
    ]
    emd.file_writer(
        str(tmp_path / "haadf.emd"),
        {
            "data": img,
            "axes": axes,
            "metadata": {"General": {"title": "HAADF"}, "Signal": {"signal_type": ""}},
            "original_metadata": {},
        },
    )
    image, cal = read_image(tmp_path / "haadf.emd")
    np.testing.assert_array_equal(image, img)
    assert cal == Calibration(0.25, "nm")
    assert read_calibration(tmp_path / "haadf.emd") == (Calibration(0.25, "nm"), "EMD")


def _dm3(path, data, scale, unit):
    """Write a minimal Gatan DM3 file (version 3, little-endian data).

    The file holds the tag tree DigitalMicrograph writes for one image: ImageList with a thumbnail
    and the image (Thumbnails names the first), with ImageData's Data, Dimensions, DataType and the
    Calibrations of each dimension (the layout RosettaSciIO reads). RosettaSciIO reads DM files but
    does not write them, and its test files are not in its wheel.
    """

    def label(name):
        return struct.pack(">H", len(name)) + name.encode()

    def group(name, tags):
        return b"\x14" + label(name) + b"\x00\x00" + struct.pack(">i", len(tags)) + b"".join(tags)

    def value(name, fmt, v):
        code = {"<h": 2, "<i": 3, "<H": 4, "<I": 5, "<f": 6, "<d": 7, "<?": 8}[fmt]
        return b"\x15" + label(name) + b"%%%%" + struct.pack(">ii", 1, code) + struct.pack(fmt, v)

    def text(name, s):  # a string as DM stores it: an array of uint16
        return b"\x15" + label(name) + b"%%%%" + struct.pack(">iiii", 3, 20, 4, len(s)) + s.encode("utf-16-le")

    def array(name, a):
        code, dtype_id = {np.dtype(np.float32): (6, 2), np.dtype(np.uint8): (10, 6), np.dtype(np.int16): (2, 1)}[
            a.dtype
        ]
        raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        return b"\x15" + label(name) + b"%%%%" + struct.pack(">iiii", 3, 20, code, a.size) + raw, dtype_id

    def image(a, s, u, title):
        data_tag, dtype_id = array("Data", a)
        cal = [group("", [value("Origin", "<f", 0.0), value("Scale", "<f", s), text("Units", u)]) for _ in a.shape]
        return group(
            "",
            [
                group(
                    "ImageData",
                    [
                        group("Calibrations", [group("Dimension", cal)]),
                        data_tag,
                        value("DataType", "<i", dtype_id),
                        group("Dimensions", [value("", "<I", n) for n in a.shape[::-1]]),
                        value("PixelDepth", "<I", a.dtype.itemsize),
                    ],
                ),
                group("ImageTags", []),
                text("Name", title),
            ],
        )

    thumb = np.zeros((8, 8), np.uint8)
    root = [
        group("ImageList", [image(thumb, 1.0, "", "thumbnail"), image(data, scale, unit, "micrograph")]),
        group("Thumbnails", [group("", [value("ImageIndex", "<I", 0)])]),
        group("DocumentObjectList", []),
    ]
    body = b"\x00\x00" + struct.pack(">i", len(root)) + b"".join(root) + b"\x00" * 8
    path.write_bytes(struct.pack(">iii", 3, len(body), 1) + body)
    return path


def test_gatan_dm3_image_with_its_calibration(tmp_path):
    pytest.importorskip("rsciio.digitalmicrograph")
    img = _image().astype(np.float32)
    path = _dm3(tmp_path / "tem.dm3", img, 0.4, "nm")
    image, cal = read_image(path)
    np.testing.assert_array_equal(image, img)
    assert cal == Calibration(0.4, "nm")
    assert read_calibration(path) == (Calibration(0.4, "nm"), "Gatan DM")


# --------------------------------------------------------------------------------------------
# TIFF calibration: OME-TIFF and the sidecar files of Hitachi and JEOL SEMs


def test_ome_tiff_physical_size(tmp_path):
    import tifffile

    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(
        path,
        _image(),
        ome=True,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 3.5,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 3.5,
            "PhysicalSizeYUnit": "nm",
        },
    )
    assert read_image(path)[1] == Calibration(3.5, "nm")
    assert read_calibration(path) == (Calibration(3.5, "nm"), "OME")


HITACHI = """[SemImageFile]
InstructName=S-4800
SerialNumber=0000
Date=01/12/2026
ImageName=particles.tif
DataSize=80x64
PixelSize=4.960938
Magnification=25000
"""

JEOL = """$CM_FORMAT JEOL-SEM
$CM_VERSION 1.0
$CM_INSTRUMENT JSM-7600F
$CM_FULL_SIZE 160 128
$CM_MAG 30000
$$SM_MICRON_BAR 100
$$SM_MICRON_MARKER 500nm
"""


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_hitachi_sidecar_gives_the_pixel_size(tmp_path, suffix):
    import imageio.v3 as iio

    path = tmp_path / f"particles{suffix}"
    iio.imwrite(path, _image())
    assert read_image(path)[1] == Calibration()
    (tmp_path / "particles.txt").write_text(HITACHI, encoding="latin-1")
    assert read_image(path)[1] == Calibration(4.960938, "nm")
    cal, source = read_calibration(path)
    assert cal == Calibration(4.960938, "nm") and source == "Hitachi sidecar particles.txt"


def test_jeol_sidecar_scale_bar_at_the_saved_resolution(tmp_path):
    import tifffile

    path = tmp_path / "jeol.tif"
    tifffile.imwrite(path, _image())  # 80 px wide, saved at half of $CM_FULL_SIZE
    (tmp_path / "jeol.txt").write_text(JEOL)
    assert read_image(path)[1] == Calibration(10.0, "nm")  # 500 nm / 100 px * 160 / 80


def test_tiff_metadata_wins_over_a_sidecar(tmp_path):
    import tifffile

    path = tmp_path / "both.tif"
    tifffile.imwrite(path, _image(), imagej=True, resolution=(1 / 2.0, 1 / 2.0), metadata={"unit": "nm"})
    (tmp_path / "both.txt").write_text(HITACHI)
    assert read_image(path)[1] == Calibration(2.0, "nm")


# --------------------------------------------------------------------------------------------
# bad files: one line naming the file


@pytest.mark.parametrize(
    "name,content",
    [
        ("broken.mrc", b"not an MRC file at all" * 10),
        ("broken.dm3", b"\x00\x00\x00\x03garbage"),
        ("broken.dm4", b""),
        ("broken.emd", b"not HDF5"),
    ],
)
def test_bad_em_files_are_one_line_naming_the_file(tmp_path, name, content):
    pytest.importorskip("mrcfile")
    pytest.importorskip("rsciio")
    path = tmp_path / name
    path.write_bytes(content)
    for call in (read_image, read_calibration):
        with pytest.raises(InputError) as exc:
            call(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_mrc_is_named(tmp_path, mrc_2d):
    data = mrc_2d.read_bytes()
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mrc: cannot read MRC file"):
        read_image(cut)


def test_segment_command_reads_an_mrc(tmp_path, mrc_2d, threshold_bundle, capsys):
    from particleseg.cli import main

    rc = main(
        [
            "segment",
            str(mrc_2d),
            "--model",
            str(threshold_bundle.path),
            "--out",
            str(tmp_path / "out"),
            "--polarity",
            "bright",
            "--rescale",
            "1",
        ]
    )
    assert rc == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "grid_particles.csv")
    assert any("[nm]" in c for c in table.columns)
    assert table["kept"].sum() >= 1


def test_evaluate_reads_an_mrc_proposal_like_its_tiff(tmp_path):
    """Label images and masks go through the same reader (io.read_array -> formats.read).

    An MRC proposal scores exactly as the same labels written as TIFF.
    """
    mrcfile = pytest.importorskip("mrcfile")
    import pandas as pd
    import tifffile

    from particleseg.cli import main

    labels = np.zeros((64, 80), np.int16)
    labels[10:30, 10:30], labels[40:60, 35:70] = 1, 2
    truth = labels.copy()
    truth[10:30, 12:32] = 1
    for sub in ("mrc", "tif", "truth"):
        (tmp_path / sub).mkdir()
    with mrcfile.new(tmp_path / "mrc" / "a_labels.mrc") as m:
        m.set_data(labels)
    tifffile.imwrite(tmp_path / "tif" / "a_labels.tif", labels)
    tifffile.imwrite(tmp_path / "truth" / "a.tif", truth)
    rows = []
    for sub in ("mrc", "tif"):
        pred = tmp_path / sub / f"a_labels.{sub}"
        assert (
            main(
                [
                    "evaluate",
                    "--pred",
                    str(pred),
                    "--truth",
                    str(tmp_path / "truth" / "a.tif"),
                    "--out",
                    str(tmp_path / f"out-{sub}"),
                    "--crop-rows",
                    "0",
                    "--quiet",
                ]
            )
            == 0
        )
        rows.append(pd.read_csv(tmp_path / f"out-{sub}" / "metrics.csv").drop(columns=["pred"], errors="ignore"))
    pd.testing.assert_frame_equal(rows[0].select_dtypes("number"), rows[1].select_dtypes("number"))
    assert 0.9 < rows[0]["iou_image"].iloc[0] < 1 and rows[0]["status"].iloc[0] == "ok"


def test_run_macro_per_image_lists_only_what_imagej_opens(tmp_path, mrc_2d):
    """run-macro opens each file with ImageJ's open(), which reads no EM format.

    Those files are left out, and a folder of them only is one line that names the commands that
    read them.
    """
    import shutil

    import tifffile

    from particleseg.errors import InputError
    from particleseg.fiji.batch import list_inputs

    shutil.copy(mrc_2d, tmp_path / "b.mrc")
    with pytest.raises(InputError, match="that ImageJ opens.*Batch Segment Folder"):
        list_inputs(tmp_path)
    tifffile.imwrite(tmp_path / "a.tif", _image())
    assert [f.name for f in list_inputs(tmp_path)] == ["a.tif"]
