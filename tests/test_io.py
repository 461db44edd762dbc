"""Outputs follow the umask: colleagues on a shared cluster can read what pixeldino writes (and only the umask decides).

Writers that go through a private temporary (safetensors' ``save_file`` writes 0600, ``tempfile.mkdtemp`` makes
0700 directories) must still publish files with ``0666 & ~umask`` and directories with ``0777 & ~umask``, the modes
a plain ``open()``/``mkdir()`` gives.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pixeldino.io import atomic_output, current_umask, follow_umask, gtiff_to_cog, write_json

#: (umask, file mode, directory mode) a plain open()/mkdir() gives
CASES = [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]


@pytest.fixture(params=CASES, ids=lambda c: f"umask{c[0]:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[tuple[int, int, int]]:
    """Run the test under each umask, restoring the process's own afterwards."""
    mask = request.param[0]
    before = os.umask(mask)
    try:
        yield request.param
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_current_umask_reads_without_changing(umask: tuple[int, int, int]) -> None:
    assert current_umask() == umask[0]
    assert current_umask() == umask[0]  # still the same: reading did not leave another value behind


def test_safetensors_writer_is_private_on_its_own(tmp_path: Path) -> None:
    """The premise: without follow_umask a safetensors file is 0600 whatever the umask (so the fix is needed)."""
    before = os.umask(0o022)
    try:
        save_file({"w": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
    finally:
        os.umask(before)
    if mode(tmp_path / "raw.safetensors") != 0o600:
        pytest.skip("this safetensors version already writes files by the umask")


def test_model_files(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    from pixeldino.model import UNetConfig, build_model
    from pixeldino.modelio import metadata_path, save_model

    model = build_model(UNetConfig(in_channels=2, width=4, depth=2, n_pseudo_classes=4))
    path = save_model(tmp_path / "model" / "model.safetensors", model, {"bands": ["B04", "B08"], "normalisation": {}})
    assert mode(path) == umask[1]
    assert mode(metadata_path(path)) == umask[1]


def test_json(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    out = write_json(tmp_path / "stats.json", {"n": np.int64(3)})
    assert mode(out) == umask[1]


def test_cog(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    import rasterio
    from rasterio.transform import from_origin

    src = tmp_path / "src.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=32,
        height=32,
        count=1,
        dtype="uint8",
        crs="EPSG:3413",
        transform=from_origin(0, 0, 10, 10),
    ) as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
    out = gtiff_to_cog(src, tmp_path / "out" / "prob.tif", blocksize=256)
    assert mode(out) == umask[1]


def test_directory_output(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    """A directory written through atomic_output from a private temporary: it and everything in it."""
    final = tmp_path / "store.zarr"
    with atomic_output(final) as tmp:
        tmp.mkdir(mode=0o700)
        (tmp / "sub").mkdir(mode=0o700)
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "weights.safetensors"))
        (tmp / "zarr.json").write_text("{}")
        os.chmod(tmp / "zarr.json", 0o600)
    assert mode(final) == umask[2]
    assert mode(final / "sub") == umask[2]
    assert mode(final / "sub" / "weights.safetensors") == umask[1]
    assert mode(final / "zarr.json") == umask[1]


def test_checkpoint_directory(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    """train's checkpoint swap (safetensors files in a fresh directory) publishes readable files."""
    from pixeldino.train.checkpoints import replace_dir as _replace_dir

    tmp = tmp_path / ".checkpoint.tmp"
    tmp.mkdir(mode=0o700)
    save_file({"w": torch.zeros(2)}, str(tmp / "student.safetensors"))
    final = tmp_path / "checkpoint"
    final.mkdir()  # an older checkpoint being replaced
    _replace_dir(tmp, final)
    assert mode(final) == umask[2]
    assert mode(final / "student.safetensors") == umask[1]


def test_engine_cache(tmp_path: Path, umask: tuple[int, int, int]) -> None:
    """The engine cache: an exported file and an OpenVINO folder that starts as a mkdtemp (0700) directory."""
    from pixeldino.engines import _publish_dir, _publish_file

    tmp_file = tmp_path / ".model.tmp.onnx"
    tmp_file.write_bytes(b"onnx")
    os.chmod(tmp_file, 0o600)
    _publish_file(tmp_file, tmp_path / "model.onnx")
    assert mode(tmp_path / "model.onnx") == umask[1]

    folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".openvino.tmp-"))
    (folder / "model.xml").write_text("<net/>")
    os.chmod(folder / "model.xml", 0o600)
    _publish_dir(folder, tmp_path / "openvino")
    assert mode(tmp_path / "openvino") == umask[2]
    assert mode(tmp_path / "openvino" / "model.xml") == umask[1]


def test_keeps_setgid_and_executables(tmp_path: Path) -> None:
    """A group-shared (setgid) directory keeps its setgid bit; a file made executable stays executable."""
    before = os.umask(0o022)
    try:
        d = tmp_path / "shared"
        d.mkdir(mode=0o700)
        try:
            os.chmod(d, 0o2700)
        except PermissionError:
            pytest.skip("cannot set the setgid bit here")
        if not d.stat().st_mode & stat.S_ISGID:
            pytest.skip("the file system ignores the setgid bit")
        script = d / "run.sh"
        script.write_text("#!/bin/sh\n")
        os.chmod(script, 0o700)
        follow_umask(d)
        assert mode(d) == 0o2755
        assert mode(script) == 0o755
    finally:
        os.umask(before)


def test_symlinks_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    target.write_text("x")
    os.chmod(target, 0o600)
    d = tmp_path / "d"
    d.mkdir()
    (d / "link").symlink_to(target)
    before = os.umask(0o022)
    try:
        follow_umask(d)
    finally:
        os.umask(before)
    assert mode(target) == 0o600  # chmod did not follow the link out of the output
