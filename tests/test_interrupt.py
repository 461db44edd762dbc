"""Interruptions: SIGINT, SIGTERM and SIGKILL sent to real ``python -m pixeldino <verb>`` processes while they write.

For every verb that writes large outputs (fetch, chip, train, predict, merge) a subprocess is started on small
synthetic inputs, and the signal is sent once the verb is writing: when a temporary of its output has appeared in
the output folder (for train: its checkpoint or log). Then:

* SIGINT (Ctrl-C) and SIGTERM (what SLURM and Snakemake send) end it with status 130 / 143 and one line
  ``interrupted; nothing written to OUT`` on stderr (besides log records), no traceback, and nothing at the output
  path: no final output and no temporary;
* SIGKILL leaves its temporaries behind (nothing can run), and the next run of the same command removes them and
  writes the output.

The scenarios run on a pool of two workers, started together when the module's fixture is first used, so the file
takes about half the time of running them one after the other.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterfiles import write_synthetic_pair
from shapely.geometry import box
from test_predict import make_model, write_scene

from pixeldino import synthetic
from pixeldino.chip import ChipParams, run_chip
from pixeldino.manifest import write_manifest

#: a log record on stderr (the stage's progress log), or train's progress bar: neither is what the user is told
LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ \S+: ")
PROGRESS_BAR = re.compile(r"^train \S+: +\d+%\|")


def told(stderr: str) -> list[str]:
    """The lines of ``stderr`` that tell the user something: not log records, progress bars or blank lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not LOG_RECORD.match(line) and not PROGRESS_BAR.match(line)
    ]


WAIT_S = 120.0
#: the longest an interrupted verb may take to clean up and end, on a busy 2-core machine
CLEANUP_S = 30.0
WORKERS = 2


@dataclass
class Outcome:
    """What one scenario saw: the interrupted run, and the rerun after a SIGKILL."""

    returncode: int
    stderr: str
    seen: list[str]  # the output folder when the signal was sent
    left: list[str]  # the output folder afterwards (after the rerun for SIGKILL)
    ended_in: float  # seconds from the signal to the end of the process
    rerun_returncode: int | None = None
    rerun_stderr: str = ""


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (relative paths), temporaries included; entries vanishing meanwhile are skipped
    (the verb is writing and cleaning up while this looks)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk ignores folders removed under it
        found.extend(os.path.relpath(os.path.join(dirpath, n), folder) for n in dirnames + filenames)
    return sorted(found)


def temporaries(names: list[str]) -> list[str]:
    return [n for n in names if ".tmp-" in n]


def pixeldino(args: list[str | Path]) -> subprocess.Popen[str]:
    """``python -m pixeldino ARGS`` with SIGINT at its default (a background job inherits it ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pixeldino", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # the watchdog that ends a hanging cleanup waits longer than CLEANUP_S: a hang fails the test
        env={**os.environ, "OMP_NUM_THREADS": "1", "PIXELDINO_INTERRUPT_GRACE_S": "100"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@dataclass
class Scenario:
    """A verb run, the folder it writes, and when it is writing."""

    verb: str
    args: Callable[[dict[str, Path], Path], list[str | Path]]
    writing: Callable[[list[str]], bool] = field(default=lambda names: bool(temporaries(names)))


def run_scenario(scenario: Scenario, sig: signal.Signals, inputs: dict[str, Path], out: Path) -> Outcome:
    args = scenario.args(inputs, out)
    proc = pixeldino(args)
    deadline = time.monotonic() + WAIT_S
    try:
        while not scenario.writing(seen := listing(out)):
            if proc.poll() is not None:
                raise AssertionError(f"{scenario.verb} ended (status {proc.returncode}) before writing: {seen}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{scenario.verb} did not start writing within {WAIT_S} s")
            time.sleep(0.005)
        proc.send_signal(sig)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=WAIT_S)
        ended_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    outcome = Outcome(proc.returncode, stderr, seen, listing(out), ended_in)
    if sig == signal.SIGKILL:
        rerun = subprocess.run(
            [sys.executable, "-m", "pixeldino", *map(str, args)], capture_output=True, text=True, timeout=WAIT_S
        )
        outcome.rerun_returncode, outcome.rerun_stderr, outcome.left = rerun.returncode, rerun.stderr, listing(out)
    return outcome


# ------------------------------------------------------------------------------------------------ the verbs


def _fetch(i: dict[str, Path], out: Path) -> list[str | Path]:
    return ["fetch", "--manifest", i["manifest"], "--bands", "B04", "--out-dir", out]


def _chip(i: dict[str, Path], out: Path) -> list[str | Path]:
    return [
        "chip", "--scenes", i["scene"], "--labels", i["labels"], "--unlabelled-scenes", i["unlabelled"],
        "--bands", ",".join(synthetic.BANDS), "--size", "32", "--n-labelled", "300", "--n-unlabelled", "300",
        "--out", out / "chips.zarr",
    ]  # fmt: skip


def _train(i: dict[str, Path], out: Path) -> list[str | Path]:
    return [
        "train", "--chips", i["chips"], "--out-dir", out, "--mode", "supervised", "--steps", "100000",
        "--batch-labelled", "2", "--batch-unlabelled", "2", "--width", "4", "--depth", "2", "--threads", "1",
        "--checkpoint-every", "1", "--log-every", "1", "--val-every", "100000",
    ]  # fmt: skip


def _training(names: list[str]) -> bool:
    """Train is writing once its checkpoint or log exists (each step rewrites them)."""
    return any(n.startswith(("checkpoint", ".checkpoint", "training_log", ".training_log")) for n in names)


def _predict(i: dict[str, Path], out: Path) -> list[str | Path]:
    return [
        "predict", i["predict_scene"], "--model", i["model"], "--out", out / "prob.tif",
        "--pseudo-out", out / "pseudo.tif", "--threads", "1", "--backend", "torch",
    ]  # fmt: skip


def _merge(i: dict[str, Path], out: Path) -> list[str | Path]:
    return ["merge", *i["polygons"], "--crs", "EPSG:32608", "--out", out / "rts.gpkg"]


SCENARIOS = {
    "fetch": Scenario("fetch", _fetch),
    "chip": Scenario("chip", _chip),
    "train": Scenario("train", _train, _training),
    "predict": Scenario("predict", _predict),
    "merge": Scenario("merge", _merge),
}
#: the output paths each verb names when interrupted (relative to its output folder; "" is the folder itself)
NAMED = {
    "fetch": ["S2_08WMA_BIG.tif"],
    "chip": ["chips.zarr"],
    "predict": ["prob.tif", "pseudo.tif"],
    "merge": ["rts.gpkg"],
}
CASES = [
    *((verb, sig) for verb in SCENARIOS for sig in (signal.SIGINT, signal.SIGTERM)),
    *((verb, signal.SIGKILL) for verb in ("fetch", "chip", "predict", "merge")),
]


def _case_id(case: tuple[str, signal.Signals]) -> str:
    return f"{case[0]}-{case[1].name}"


# ------------------------------------------------------------------------------------------------ the inputs


def _band(path: Path, size: int) -> Path:
    rng = np.random.default_rng(1)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16", crs="EPSG:32608",
        transform=Affine(10, 0, 500_000, 0, -10, 7_700_000), nodata=0, tiled=True, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(rng.integers(1, 10_000, (size, size), dtype=np.uint16), 1)
    return path


def _polygons(path: Path, k: int, n: int = 4000) -> Path:
    """``n`` small disjoint squares of scene ``k`` (a grid, offset per scene so that half overlap the next)."""
    side = int(np.ceil(np.sqrt(n)))
    x0 = 500_000 + 50.0 * k
    geoms = [box(x0 + 200 * c, 7_600_000 + 200 * r, x0 + 200 * c + 100, 7_600_000 + 200 * r + 100) for r in
             range(side) for c in range(side)][:n]  # fmt: skip
    gpd.GeoDataFrame(
        {
            "scene_id": [f"S{k}"] * n,
            "tile": ["08WMA"] * n,
            "datetime": [f"2022-07-0{k + 1}T20:00:00Z"] * n,
            "prob_max": np.linspace(0.5, 1.0, n),
            "touches_nodata": [False] * n,
        },
        geometry=geoms,
        crs="EPSG:32608",
    ).to_file(path, layer="rts")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    _, paths = write_synthetic_pair(d, 256)
    run_chip(
        ChipParams(size=32, n_labelled=8, n_unlabelled=8, seed=0), scenes=[paths["scene"]], bands=list(synthetic.BANDS),
        out=d / "chips.zarr", labels=paths["labels"], unlabelled_scenes=[paths["unlabelled"]],
    )  # fmt: skip
    paths["chips"] = d / "chips.zarr"
    rng = np.random.default_rng(0)
    paths["predict_scene"] = write_scene(d / "scene.tif", rng.integers(1, 6000, (4, 640, 640)).astype(np.uint16))
    paths["model"] = make_model(d / "model.safetensors")
    scene = {
        "id": "S2_08WMA_BIG",
        "tile": "08WMA",
        "datetime": "2021-07-01T21:00:00+00:00",
        "crs": "EPSG:32608",
        "processing_baseline": "03.00",
        "assets": {"B04": str(_band(d / "B04.tif", 2048))},
    }
    manifest = {"pixeldino_manifest": 1, "provider": {"name": "local"}, "scenes": [scene]}
    paths["manifest"] = write_manifest(manifest, d / "manifest.json")
    paths["polygons"] = [_polygons(d / f"scene{k}.gpkg", k) for k in range(3)]  # type: ignore[assignment]
    return paths


@pytest.fixture(scope="module")
def outcomes(inputs: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Outcome]]]:
    """Every selected case, all started at once on a pool of :data:`WORKERS` workers."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is sys.modules[__name__] and hasattr(item, "callspec") and "case" in item.callspec.params
    ]
    outs = inputs["manifest"].parent.parent / "outputs"
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {}
        for verb, sig in selected:
            out = outs / _case_id((verb, sig))
            out.mkdir(parents=True)
            futures[_case_id((verb, sig))] = pool.submit(run_scenario, SCENARIOS[verb], sig, inputs, out)
        yield futures
        for f in futures.values():
            f.cancel()


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != signal.SIGKILL], ids=_case_id)
def test_signal_ends_the_verb_in_one_line_and_leaves_nothing(
    case: tuple[str, signal.Signals], outcomes: dict[str, Future[Outcome]], inputs: dict[str, Path]
) -> None:
    verb, sig = case
    result = outcomes[_case_id(case)].result()
    out = inputs["manifest"].parent.parent / "outputs" / _case_id(case)
    assert result.returncode == 128 + sig, result.stderr  # 130 for SIGINT, 143 for SIGTERM
    assert result.ended_in < CLEANUP_S, result.ended_in  # a clean end, not the watchdog's
    assert "Traceback" not in result.stderr, result.stderr
    lines = told(result.stderr)
    if verb == "train":
        # between two writes train names its output folder (its command line's); during one, the file it rewrites
        assert len(lines) == 1 and re.fullmatch(
            f"interrupted; nothing written to {re.escape(str(out))}(/training_log.csv)?", lines[0]
        ), result.stderr
        # the model is not there; the checkpoint and log (a resumable run's state) may be, each complete
        assert not {"model.safetensors", "model.json"} & set(result.left), result.left
        assert temporaries(result.left) == [], result.left
        for checkpoint in ("checkpoint", "checkpoint.old"):
            assert checkpoint not in result.left or f"{checkpoint}/state.json" in result.left, result.left
    else:
        named = ", ".join(str(out / n) for n in NAMED[verb])
        assert lines == [f"interrupted; nothing written to {named}"], result.stderr
        assert temporaries(result.seen), result.seen  # it was writing when the signal came
        assert result.left == [], result.left


@pytest.mark.parametrize("case", [c for c in CASES if c[1] == signal.SIGKILL], ids=_case_id)
def test_sigkill_leaves_temporaries_that_the_next_run_removes(
    case: tuple[str, signal.Signals], outcomes: dict[str, Future[Outcome]]
) -> None:
    verb, _ = case
    result = outcomes[_case_id(case)].result()
    assert result.returncode == -signal.SIGKILL
    assert temporaries(result.seen), result.seen
    assert result.rerun_returncode == 0, result.rerun_stderr
    assert temporaries(result.left) == [], result.left  # the killed run's temporaries are gone
    for name in NAMED[verb]:
        assert name in result.left, result.left


_HANGING_STAGE = """
import sys, time
from pathlib import Path
from pixeldino.io import new_temporary
from pixeldino.runner import run_stage

out = Path(sys.argv[1])

def stage():
    new_temporary(out, directory=True)
    print("writing", flush=True)
    try:
        time.sleep(60)
    finally:
        time.sleep(60)  # a cleanup that never ends (e.g. a writer thread's queue that is never drained)

run_stage("demo", stage, outputs=[out])
"""


def test_a_cleanup_that_hangs_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    out = tmp_path / "out" / "result.tif"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGING_STAGE, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PIXELDINO_INTERRUPT_GRACE_S": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
        assert temporaries(listing(out.parent)), listing(out.parent)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and time.monotonic() - started < 15
    assert told(stderr) == [f"interrupted; nothing written to {out}"], stderr
    assert listing(out.parent) == []  # the watchdog removed the run's temporary before ending it
