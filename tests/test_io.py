"""Outputs follow the umask: colleagues on a shared cluster can read what pixeldino writes (and only the umask decides).

Writers that go through a private temporary (safetensors' ``save_file`` writes 0600, ``tempfile.mkdtemp`` makes
0700 directories) must still publish files with ``0666 & ~umask`` and directories with ``0777 & ~umask``, the modes
a plain ``open()``/``mkdir()`` gives.
"""

from __future__ import annotations

import os
import re
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


# ------------------------------------------------------------------------ temporaries, SIGKILL leftovers, interrupts


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _temporary_of(final: Path, pid: int, host: str | None = None, ending: str = ".tif") -> Path:
    from pixeldino.io import _host_tag

    return final.with_name(f".{final.name}.tmp-{host or _host_tag()}-{pid}-0123abcd{ending}")


def test_temporaries_are_named_for_their_output_host_and_process(tmp_path: Path) -> None:
    from pixeldino.io import _host_tag, is_temporary, new_temporary, temporary

    final = tmp_path / "out" / "prob.tif"
    tmp = new_temporary(final)
    assert tmp.parent == final.parent and not tmp.exists()  # a file is only named
    assert re.fullmatch(rf"\.prob\.tif\.tmp-{_host_tag()}-{os.getpid()}-[0-9a-f]{{8}}\.tif", tmp.name)
    assert is_temporary(tmp) and not is_temporary(final)
    with temporary(final, directory=True) as folder:
        assert folder.is_dir() and re.fullmatch(r"\.prob\.tif\.tmp-.+-[0-9a-f]{8}", folder.name)  # no suffix
        assert is_temporary(folder)
        (folder / "part.tif").write_bytes(b"x")
    assert not folder.exists()


def test_stale_temporaries_of_dead_processes_are_removed_live_and_foreign_ones_kept(tmp_path: Path) -> None:
    from pixeldino.io import atomic_output, remove_stale_temporaries

    final = tmp_path / "scene.tif"
    dead = _dead_pid()
    killed = _temporary_of(final, dead)
    killed.write_bytes(b"half a COG")
    sidecar = Path(f"{killed}.aux.xml")
    sidecar.write_text("<PAMDataset/>")
    nested = final.with_name(f".{killed.name}.tmp-{killed.name.split('.tmp-')[1].split('-0123abcd')[0]}-89abcdef.gpkg")
    nested.mkdir()  # a temporary of the temporary (an atomic write nested in another)
    live = _temporary_of(final, os.getpid())  # this process: still writing
    live.write_bytes(b"in progress")
    foreign = _temporary_of(final, dead, host="othernode")  # another host's PID cannot be checked here
    foreign.write_bytes(b"elsewhere")
    other_output = _temporary_of(tmp_path / "other.tif", dead)
    other_output.write_bytes(b"another output's")
    removed = remove_stale_temporaries(final)
    assert set(removed) == {killed, sidecar, nested}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, other_output.name])
    # starting to write the output does the same
    killed.write_bytes(b"again")
    with atomic_output(final) as tmp:
        assert not killed.exists()
        tmp.write_bytes(b"complete")
    assert final.read_bytes() == b"complete" and live.exists() and foreign.exists()


def test_a_temporary_no_finally_holds_yet_is_removed_after_an_interruption(tmp_path: Path) -> None:
    """A signal right after ``mkdir`` returns leaves a temporary its maker never held; the runner removes it."""
    from pixeldino.io import new_temporary, remove_own_temporaries

    orphan = new_temporary(tmp_path / "checkpoint", directory=True)
    (orphan / "student.safetensors").write_bytes(b"half")
    with atomic_output(tmp_path / "done.json") as tmp:
        tmp.write_text("{}")
    assert remove_own_temporaries() == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]
    assert remove_own_temporaries() == []


def test_atomic_output_that_fails_leaves_nothing_and_marks_its_output_in_progress(tmp_path: Path) -> None:
    from pixeldino.io import atomic_output, outputs_in_progress

    final = tmp_path / "rts.gpkg"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            assert outputs_in_progress() == [final]
            with atomic_output(tmp) as inner:  # a nested atomic write names the outer output only
                assert outputs_in_progress() == [final]
                inner.write_bytes(b"layer")
                Path(f"{inner}-journal").write_bytes(b"sqlite")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == [] and outputs_in_progress() == []


def test_interruption_waits_for_a_critical_section_and_names_the_outputs(tmp_path: Path) -> None:
    import signal

    from pixeldino.io import Interrupted, critical_section, raise_interrupted, reset_interruption, writing

    out = tmp_path / "scene.tif"
    done = []
    try:
        with writing(out), pytest.raises(Interrupted) as info:
            with critical_section():
                raise_interrupted(signal.SIGTERM)  # as the signal handler does: held back here
                done.append("renamed")
        assert done == ["renamed"]  # the section completed before the interruption was raised
        assert info.value.signum == signal.SIGTERM and info.value.outputs == [out]
        with pytest.raises(Interrupted) as info:
            raise_interrupted(signal.SIGINT)  # outside any section: at once
        assert info.value.signum == signal.SIGINT and info.value.outputs == []
        assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` lets it pass
    finally:
        reset_interruption()


def test_checkpoint_write_removes_a_killed_runs_temporary(tmp_path: Path) -> None:
    from pixeldino.train.checkpoints import Checkpoint, find_checkpoint, write_checkpoint

    directory = tmp_path / "checkpoint"
    killed = _temporary_of(directory, _dead_pid(), ending="")
    killed.mkdir()
    (killed / "student.safetensors").write_bytes(b"half")
    tensors = {"w": torch.zeros(2)}
    write_checkpoint(directory, Checkpoint(tensors, tensors, tensors, tensors, {"step": 1}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert find_checkpoint(directory) == directory


def test_checkpoint_swap_after_a_kill_between_the_renames_keeps_the_old_one(tmp_path: Path) -> None:
    """A kill between the two renames left only ``checkpoint.old``: the next swap keeps it until the new is in."""
    from pixeldino.train.checkpoints import find_checkpoint, replace_dir

    old = tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "state.json").write_text('{"step": 5}')
    assert find_checkpoint(tmp_path / "checkpoint") == old
    new = tmp_path / ".new"
    new.mkdir()
    (new / "state.json").write_text('{"step": 6}')
    replace_dir(new, tmp_path / "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "state.json").read_text() == '{"step": 6}'


def test_outputs_are_read_from_the_command_line() -> None:
    from pixeldino.cli import build_parser

    def outputs_from_argv(argv: list[str], verb: str) -> list[str]:
        return getattr(build_parser(only=verb).parse_args(argv), "outputs", [])

    argv = ["predict", "s.tif", "--model", "m.safetensors", "--out", "p.tif", "--pseudo-out=c.tif", "--threads", "1"]
    assert outputs_from_argv(argv, "predict") == ["p.tif", "c.tif"]
    assert outputs_from_argv(["fetch", "--manifest", "m.json", "--out-dir", "scenes/"], "fetch") == ["scenes/"]
    # chip's --holdout and catalog's --tracks-parquet are inputs
    chip = ["chip", "--scenes", "a.tif", "--holdout", "h.gpkg", "--out", "c.zarr"]
    assert outputs_from_argv(chip, "chip") == ["c.zarr"]
    catalog = ["catalog", "--tracks-parquet", "t.parquet", "--out", "stac/"]
    assert outputs_from_argv(catalog, "catalog") == ["stac/"]
    change = ["change", "a.gpkg", "--out", "c.gpkg", "--tracks-parquet", "t.parquet"]
    assert outputs_from_argv(change, "change") == ["c.gpkg", "t.parquet"]


def test_a_signal_inside_the_standard_librarys_locking_code_waits_for_it_to_finish() -> None:
    """Cutting ``Condition.notify`` loses a wake-up (a writer thread then never stops); cutting a wait is safe."""
    import sys
    import threading

    from pixeldino.runner import _cut_here_is_unsafe

    frames = {}

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_name in ("notify", "wait"):
            frames.setdefault(frame.f_code.co_name, frame)

    condition = threading.Condition()
    sys.settrace(tracer)
    try:
        with condition:
            condition.notify()
            condition.wait(0.001)
    finally:
        sys.settrace(None)
    assert _cut_here_is_unsafe(frames["notify"]) and not _cut_here_is_unsafe(frames["wait"])
    assert not _cut_here_is_unsafe(sys._getframe()) and not _cut_here_is_unsafe(None)
