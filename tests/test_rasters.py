"""pixeldino.rasters: every raster problem is one InputError line, including decode failures GDAL only logs.

The JPEG2000 cases use a real JP2 file written with GDAL's JP2OpenJPEG driver (the format of Sentinel-2 bands) and
cut short, as an interrupted download leaves it. Read by plain rasterio with GDAL's decoding threads, such a file
yields zeros and only a log line (``opj_get_decoded_tile() failed``): the premise test shows this, and the others
show that every read through :mod:`pixeldino.rasters` turns it into an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterfiles import write_geotiff
from rasterio.drivers import raster_driver_extensions
from rasterio.transform import from_origin

from pixeldino.errors import InputError
from pixeldino.rasters import (
    READ_OPTIONS,
    gdal_errors,
    gdal_message,
    georeference_problem,
    open_raster,
    read_raster,
    reading,
)

CRS = "EPSG:32608"
TRANSFORM = from_origin(500_000, 7_700_000, 10, 10)
needs_jp2 = pytest.mark.skipif(
    "JP2OpenJPEG" not in set(raster_driver_extensions().values()), reason="GDAL lacks the JP2OpenJPEG driver"
)


def band_data(size: int = 256, seed: int = 0) -> np.ndarray:
    """A uint16 band that compresses poorly (noise on a gradient), so that a cut file loses whole tiles."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.int64) * 7
    return (1000 + ramp % 3000 + rng.integers(0, 500, (size, size))).astype(np.uint16)


def write_jp2(path: Path, data: np.ndarray, transform: Affine = TRANSFORM, crs: str = CRS) -> Path:
    """A lossless, tiled (128 px) JPEG2000 band, as Sentinel-2 products hold them."""
    return write_geotiff(
        path,
        data,
        transform=transform,
        crs=crs,
        driver="JP2OpenJPEG",
        QUALITY=100,
        REVERSIBLE="YES",
        BLOCKXSIZE=128,
        BLOCKYSIZE=128,
        RESOLUTIONS=1,
    )


def write_gtiff(path: Path, data: np.ndarray, *, crs: str | None = CRS, transform: Affine | None = TRANSFORM) -> Path:
    """A tiled, compressed GeoTIFF (a scene COG's layout); ``crs``/``transform`` None leave them out."""
    return write_geotiff(
        path, data, transform=transform, crs=crs, tiled=True, blockxsize=128, blockysize=128, compress="deflate"
    )


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut ``path`` to ``keep`` of its bytes: the header stays, the last tiles are gone."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@needs_jp2
def test_premise_a_truncated_jp2_read_by_plain_rasterio_gives_zeros_and_no_error(tmp_path: Path) -> None:
    path = truncate(write_jp2(tmp_path / "B04.jp2", band_data()))
    with rasterio.Env(GDAL_NUM_THREADS="4"), rasterio.open(path) as src:  # GDAL decodes tiles in worker threads
        try:
            data = src.read(1)
        except rasterio.errors.RasterioIOError:
            # Whether the failing tile is decoded by a worker thread (error only logged) or by the calling thread
            # (error raised) depends on timing; the premise shows only when a worker got it.
            pytest.skip("this time the failing tile was decoded in the calling thread, so GDAL raised")
    assert (data == 0).mean() >= 0.25  # whole tiles of zeros, and no exception: the failure was only logged


@needs_jp2
def test_truncated_jp2_is_one_input_error_line(tmp_path: Path) -> None:
    path = truncate(write_jp2(tmp_path / "B04.jp2", band_data()))
    with rasterio.Env(GDAL_NUM_THREADS="4"):  # even where the caller asked GDAL for decoding threads
        with open_raster(path, "band B04", "download it again") as src, pytest.raises(InputError) as err:
            read_raster(src, 1)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read band B04 (") and "\n" not in message
    assert "opj_get_decoded_tile() failed" in message
    assert message.endswith("the file is corrupt or truncated: download it again")


@needs_jp2
def test_intact_jp2_reads_exactly(tmp_path: Path) -> None:
    data = band_data()
    with open_raster(write_jp2(tmp_path / "B04.jp2", data), "band") as src:
        assert np.array_equal(read_raster(src, 1), data)


def test_truncated_geotiff_is_one_input_error_line(tmp_path: Path) -> None:
    path = truncate(write_gtiff(tmp_path / "scene.tif", band_data()), keep=0.5)
    with open_raster(path, "scene", "fetch it again") as src:
        assert np.array_equal(read_raster(src, 1, window=((0, 128), (0, 128))), band_data()[:128, :128])
        with pytest.raises(InputError, match=r"scene\.tif: cannot read scene \(.*TIFFReadEncodedTile\(\) failed"):
            read_raster(src, 1)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # writing the ungeoreferenced file
def test_missing_unreadable_and_ungeoreferenced_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.tif: scene not found; check the path$"):
        with open_raster(tmp_path / "nope.tif", "scene"):
            pass
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(InputError, match=r"text\.tif: cannot read scene \(.*not recognized.*\); fetch it again$"):
        with open_raster(tmp_path / "text.tif", "scene", "fetch it again"):
            pass
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif: cannot read scene"):
        with open_raster(tmp_path / "empty.tif", "scene"):
            pass
    no_crs = write_gtiff(tmp_path / "nocrs.tif", band_data(64), crs=None)
    with pytest.raises(InputError, match=r"nocrs\.tif: scene has no CRS, so it cannot be placed on the map"):
        with open_raster(no_crs, "scene"):
            pass
    no_transform = write_gtiff(tmp_path / "notransform.tif", band_data(64), transform=None)
    with pytest.raises(InputError, match=r"notransform\.tif: scene has no geotransform"):
        with open_raster(no_transform, "scene"):
            pass
    with open_raster(no_crs, "picture", georeferenced=False) as src:  # allowed when asked for
        assert src.crs is None and read_raster(src, 1).shape == (64, 64)


def test_georeference_problem() -> None:
    assert georeference_problem(None, TRANSFORM) == "has no CRS"
    assert georeference_problem(CRS, Affine.identity()) == "has no geotransform"
    assert georeference_problem(CRS, TRANSFORM) is None
    assert georeference_problem(None, Affine.identity(), gcps=True) is None


def test_reads_decode_in_the_reading_thread_and_datasets_close_in_any_order(tmp_path: Path) -> None:
    path = write_gtiff(tmp_path / "a.tif", band_data(64))
    assert READ_OPTIONS == {"GDAL_NUM_THREADS": "1"}
    with gdal_errors():
        assert rasterio.env.getenv()["GDAL_NUM_THREADS"] == "1"
    # datasets may be closed in any order (chipping keeps one reader per scene open)
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    a = first.enter_context(open_raster(path))
    b = second.enter_context(open_raster(path))
    first.close()
    assert read_raster(b, 1).shape == (64, 64)
    second.close()
    assert a.closed and b.closed


def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL library rasterio runs on (the wheel's bundled copy), to report an error the way a driver does."""
    import rasterio as rio

    libs = glob.glob(os.path.join(os.path.dirname(rio.__file__), os.pardir, "rasterio.libs", "libgdal*.so*"))
    if not libs:
        return None
    lib = ctypes.CDLL(libs[0])
    lib.CPLError.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    return lib


CE_FAILURE, CPLE_APP_DEFINED = 3, 1


def test_an_error_gdal_only_reports_fails_the_read() -> None:
    """A failure GDAL reports while the call returns normally (a driver that logs and carries on) is an error."""
    lib = _gdal_library()
    if lib is None:
        pytest.skip("rasterio does not bundle libgdal here; cannot call CPLError")
    with pytest.raises(InputError) as err:
        with reading("scene.tif", "scene", "fetch it again"):
            lib.CPLError(CE_FAILURE, CPLE_APP_DEFINED, b"tile 3 failed to decode")
    assert str(err.value) == (
        "scene.tif: cannot read scene (GDAL reported: tile 3 failed to decode); "
        "the file is corrupt or truncated: fetch it again"
    )
    with reading("scene.tif"):  # a warning is not a failure
        lib.CPLError(2, CPLE_APP_DEFINED, b"just a warning")


def test_errors_of_other_threads_count_only_when_asked() -> None:
    lib = _gdal_library()
    if lib is None:
        pytest.skip("rasterio does not bundle libgdal here; cannot call CPLError")

    def other_thread() -> None:
        with rasterio.Env():  # rasterio's error handler: GDAL's errors reach its logger
            lib.CPLError(CE_FAILURE, CPLE_APP_DEFINED, b"another file failed")

    with gdal_errors() as mine:
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert mine == []  # a concurrent read of another file is not blamed on this one
    with gdal_errors(all_threads=True) as pooled:
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert pooled == ["another file failed"]


def test_gdal_message_quotes_gdal_not_rasterio(tmp_path: Path) -> None:
    path = truncate(write_gtiff(tmp_path / "t.tif", band_data()), keep=0.5)
    with rasterio.open(path) as src, pytest.raises(rasterio.errors.RasterioIOError) as err:
        src.read(1)
    assert str(err.value).startswith("Read failed")
    assert "TIFFReadEncodedTile() failed" in gdal_message(err.value)


def test_read_raster_keeps_masked_arrays_and_names_other_datasets(tmp_path: Path) -> None:
    from rasterio.vrt import WarpedVRT

    data = band_data(64)
    data[:8] = 0
    path = write_gtiff(tmp_path / "m.tif", data)
    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
    with open_raster(path) as src, WarpedVRT(src) as vrt:
        values = read_raster(vrt, 1, masked=True)
        assert isinstance(values, np.ma.MaskedArray) and values.mask[:8].all() and not values.mask[8:].any()


# ------------------------------------------------------------------------ a truncated scene COG, through the CLI

#: a log record on stderr (the stage's progress log); every other line is what the user is told
LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ \S+: ")


def truncated_cog(src: Path, out: Path) -> Path:
    """``src`` as the COG ``pixeldino fetch`` writes, with its second half cut off (header intact, tiles gone)."""
    from pixeldino.io import gtiff_to_cog

    return truncate(gtiff_to_cog(src, out, blocksize=128), keep=0.5)


def one_error_line(args: list[str | Path], out_dir: Path) -> str:
    """Run ``python -m pixeldino ARGS``; assert status 1, one ``error:`` line, no traceback, nothing in out_dir."""
    result = subprocess.run(
        [sys.executable, "-m", "pixeldino", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "ERROR 1:" not in result.stderr, result.stderr
    told = [line for line in result.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert len(told) == 1 and told[0].startswith("error: "), result.stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], list(out_dir.iterdir())
    return told[0]


def test_predict_on_a_truncated_scene_cog_is_one_error_line(tmp_path: Path) -> None:
    from test_predict import make_model, write_scene

    rng = np.random.default_rng(0)
    raw = write_scene(tmp_path / "raw.tif", rng.integers(1, 6000, (4, 256, 256)).astype(np.uint16))
    scene = truncated_cog(raw, tmp_path / "scene.tif")
    model = make_model(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    error = one_error_line(
        ["predict", scene, "--model", model, "--out", out / "prob.tif", "--threads", "1", "--backend", "torch"], out
    )
    assert error.startswith(f"error: {scene}: cannot read scene (") and "TIFFReadEncodedTile() failed" in error
    assert error.endswith("the file is corrupt or truncated: fetch it again (pixeldino fetch)")


def test_chip_on_a_truncated_scene_cog_is_one_error_line(tmp_path: Path) -> None:
    from pixeldino import synthetic

    lab = synthetic.generate_scene("Horton", 0, 256, n_slumps=6)
    scene = truncated_cog(synthetic.write_scene(lab, tmp_path / "raw.tif"), tmp_path / "scene.tif")
    labels = synthetic.write_labels(lab, tmp_path / "rts.gpkg")
    out = tmp_path / "out"
    error = one_error_line(
        ["chip", "--scenes", scene, "--labels", labels, "--bands", ",".join(synthetic.BANDS), "--size", "32",
         "--n-labelled", "8", "--n-unlabelled", "8", "--out", out / "chips.zarr"],
        out,
    )  # fmt: skip
    assert error.startswith(f"error: {scene}: cannot read scene (") and "failed" in error
    assert error.endswith("the file is corrupt or truncated: fetch the scene again (pixeldino fetch)")
