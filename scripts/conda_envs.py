"""Write environment.yml and workflow/envs/{geo,torch}.yaml from requirements/pins.txt, the one list of tested versions.

``make venv`` installs with requirements/pins.txt as pip constraints, so the tests run against exactly those
versions; the conda files are generated from the same list so that the conda route asks for the same ones. What this
script adds is only what pip does not know: which packages each per-rule environment needs, and under which name and
on which channel conda publishes each package.

Usage (from the repository root, with the venv's Python, which has ``packaging``)::

    .venv/bin/python scripts/conda_envs.py           # rewrite the three files
    .venv/bin/python scripts/conda_envs.py --check   # exit 1 and show a diff if any file is stale

tests/test_conda_envs.py runs the same comparison, so a pin moved without regenerating fails the test suite.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (requires-python allows it): the backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "requirements" / "pins.txt"
PYPROJECT = ROOT / "pyproject.toml"
MAKEFILE = ROOT / "Makefile"

#: The Python series of the tested venv. conda's ``python=3.11`` is 3.11.* on purpose: patch releases share the ABI
#: every conda-forge 3.11 package is built against, and pinning one would only make the environment harder to solve.
PYTHON_SERIES = "3.11"

CONDA_FORGE = "conda-forge"
BIOCONDA = "bioconda"
PYPI = "pypi"  # no conda package: installed by pip inside the environment


@dataclass(frozen=True)
class CondaPackage:
    """Where conda finds a PyPI distribution: its conda name and the channel that publishes it."""

    name: str
    channel: str = CONDA_FORGE


#: PyPI name (canonical) -> conda package, for every package whose conda name or channel is not simply the same name on
#: conda-forge. Anything absent here is looked up under its canonical PyPI name on conda-forge.
CONDA_PACKAGES: dict[str, CondaPackage] = {
    "torch": CondaPackage("pytorch"),
    # pip's `dask` is the library alone; conda-forge's `dask` is a metapackage that adds distributed, bokeh etc.
    "dask": CondaPackage("dask-core"),
    # the same library without the Qt GUI backends conda-forge's `matplotlib` pulls in (we only write PNGs)
    "matplotlib": CondaPackage("matplotlib-base"),
    # snakemake is on conda-forge and bioconda; its SLURM executor plugin (and that plugin's jobstep dependency)
    # only on bioconda
    "snakemake-executor-plugin-slurm": CondaPackage("snakemake-executor-plugin-slurm", BIOCONDA),
    "rustac": CondaPackage("rustac", PYPI),
}

#: Short remarks written after a package's line (why it is there, where it comes from).
NOTES: dict[str, str] = {
    "onnxruntime": "CPU inference engines (predict.backend: auto picks the fastest installed)",
    "onnx": "with onnxscript: the one-off export of the model to ONNX (cached per model)",
    "distributed": "only for predict.dask_scheduler",
    "snakemake-executor-plugin-slurm": "bioconda only",
    "rustac": "PyPI only",
}

#: Why the per-rule environments list no pixeldino: what Snakemake's `script:` preamble does with sys.path (checked
#: against snakemake/script/__init__.py, PythonScript.generate_preamble, and workflow.py, Workflow.include).
RULE_ENV_IMPORTS = """\
Third-party packages only: the rule scripts import pixeldino from the source tree, not from this environment.
Snakemake inserts the directory of every Snakefile it parses (the repository root for ./Snakefile) into its own
sys.path, and the preamble it prepends to each `script:` file appends the directories on that sys.path (plus the
script's own directory) to the script's sys.path, after this environment's site-packages. `import pixeldino` in
workflow/scripts/*.py therefore finds <checkout>/pixeldino: the code of the checkout that runs, not an install.
The appended entries include the site-packages of the Python that runs Snakemake too, so a pure-Python package
missing here could silently come from there; list everything the stage imports."""


@dataclass(frozen=True)
class CondaEnv:
    """One generated environment file."""

    path: str  # relative to the repository root
    header: str  # comment lines at the top (without the leading "# ")
    packages: tuple[str, ...]  # PyPI names, in the order written
    name: str | None = None  # the `name:` of a named environment (environment.yml); per-rule envs have none


#: The per-rule environments: what the stages that use them import (workflow/rules/*.smk name the file per rule).
GEO_PACKAGES = (
    "numpy",
    "scipy",
    "rasterio",
    "pyproj",
    "shapely",
    "geopandas",
    "pyogrio",
    "pyarrow",
    "pandas",
    "pystac",
    "pystac-client",
    "dask",
    "odc-stac",
    "planetary-computer",
    "zarr",
    "matplotlib",
    "jsonschema",
    "pyyaml",
    "tqdm",
)
TORCH_PACKAGES = (
    "torch",
    "safetensors",
    "numpy",
    "scipy",
    "rasterio",
    "pyproj",
    "shapely",
    "geopandas",
    "pyogrio",
    "pandas",
    "dask",
    "zarr",
    "matplotlib",
    "jsonschema",
    "pyyaml",
    "tqdm",
    "tensorboard",
    "distributed",
    "onnxruntime",
    "openvino",
    "onnx",
    "onnxscript",
)

GENERATED = "Generated by scripts/conda_envs.py from requirements/pins.txt: edit those, then re-run it (a test checks)."


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of the pin list."""

    name: str  # as written (the PyPI spelling)
    version: str


def read_pins(path: Path = PINS) -> dict[str, Pin]:
    """The pin list as canonical name -> :class:`Pin`; anything but ``name==version`` lines and comments is an error.

    The strictness is deliberate: the same file is a pip constraints file, and a range or a marker here would make
    the venv and the conda files disagree about what "the tested version" is.
    """
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!+_-]*)", line)
        if not match:
            raise ValueError(f"{path}:{number}: expected `name==version`, got {raw!r}")
        name, version = match.groups()
        Version(version)  # raises InvalidVersion for what pip would reject as well
        key = canonicalize_name(name)
        if key in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[key] = Pin(name, version)
    return pins


def pyproject_requirements(path: Path = PYPROJECT) -> dict[str, list[Requirement]]:
    """pyproject's dependencies by group: ``""`` for [project] dependencies, else the extra's name."""
    project = tomllib.loads(path.read_text())["project"]
    groups = {"": [Requirement(r) for r in project.get("dependencies", [])]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = [Requirement(r) for r in reqs]
    return groups


def venv_packages(groups: dict[str, list[Requirement]], extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """Canonical names `pip install -e ".[dev]"` installs directly: the dependencies plus the extras, resolved through
    self-references such as ``pixeldino[engines]``, in pyproject order without repeats."""
    own = canonicalize_name(_project_name())
    names: list[str] = []
    todo = [""] + list(extras)
    seen_groups: set[str] = set()
    while todo:
        group = todo.pop(0)
        if group in seen_groups:
            continue
        seen_groups.add(group)
        for req in groups[group]:
            key = canonicalize_name(req.name)
            if key == own:
                todo.extend(sorted(req.extras))
            elif key not in names:
                names.append(key)
    return names


def _project_name(path: Path = PYPROJECT) -> str:
    return str(tomllib.loads(path.read_text())["project"]["name"])


def makefile_torch_spec(path: Path = MAKEFILE) -> str | None:
    """The default ``TORCH_SPEC`` of the Makefile (what `make venv` installs torch as), or None if absent."""
    match = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)\s*$", path.read_text(), flags=re.MULTILINE)
    return match.group(1) if match else None


def problems(pins: dict[str, Pin] | None = None, groups: dict[str, list[Requirement]] | None = None) -> list[str]:
    """Everything that makes the pin list disagree with pyproject.toml or the Makefile (empty when consistent)."""
    pins = read_pins() if pins is None else pins
    groups = pyproject_requirements() if groups is None else groups
    own = canonicalize_name(_project_name())
    found: list[str] = []
    required: dict[str, list[tuple[str, Requirement]]] = {}
    for group, reqs in groups.items():
        for req in reqs:
            if canonicalize_name(req.name) != own:
                required.setdefault(canonicalize_name(req.name), []).append((group or "dependencies", req))
    for key, uses in required.items():
        if key not in pins:
            where = ", ".join(group for group, _ in uses)
            found.append(f"{uses[0][1].name} ({where} in pyproject.toml) has no pin in requirements/pins.txt")
            continue
        for group, req in uses:
            if not req.specifier.contains(pins[key].version, prereleases=True):
                found.append(f"pin {pins[key].name}=={pins[key].version} does not satisfy {req} ({group})")
    for key, pin in pins.items():
        if key not in required:
            found.append(f"requirements/pins.txt pins {pin.name}, which pyproject.toml does not depend on")
    torch_spec = makefile_torch_spec()
    if "torch" in pins and torch_spec != f"torch=={pins['torch'].version}":
        found.append(f"Makefile TORCH_SPEC default is {torch_spec}, the pin list says torch=={pins['torch'].version}")
    return found


# ----------------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------------


def conda_package(name: str) -> CondaPackage:
    """The conda package of a PyPI distribution (default: the canonical name on conda-forge)."""
    key = canonicalize_name(name)
    return CONDA_PACKAGES.get(key, CondaPackage(key))


def environments(groups: dict[str, list[Requirement]] | None = None) -> list[CondaEnv]:
    """The three generated files: the full environment (mirrors the venv) and the two per-rule ones."""
    groups = pyproject_requirements() if groups is None else groups
    full = CondaEnv(
        path="environment.yml",
        name="pixeldino",
        header=(
            f"{GENERATED}\n"
            "The conda route to the tested venv: pixeldino's dependencies and its [dev] extra (workflow, inference\n"
            "engines, tests, linters) at the versions `make venv` installs.\n"
            "  conda env create -f environment.yml && conda activate pixeldino && pip install --no-deps -e .\n"
            "  snakemake --cores 8 --use-conda   # the rules then use workflow/envs/{geo,torch}.yaml\n"
            "Channels: conda-forge, and bioconda for what only it publishes (named with bioconda::); PyPI-only\n"
            "packages go through pip. GPU: conda-forge's pytorch picks a CUDA build when a driver is present, or ask\n"
            "for one with pytorch=<version>=cuda*."
        ),
        packages=tuple(venv_packages(groups, ("dev",))),
    )
    geo = CondaEnv(
        path="workflow/envs/geo.yaml",
        header=f"{GENERATED}\nSearch, fetch, chip, polygonize, merge, change, evaluate, catalog.\n{RULE_ENV_IMPORTS}",
        packages=GEO_PACKAGES,
    )
    torch = CondaEnv(
        path="workflow/envs/torch.yaml",
        header=(
            f"{GENERATED}\nTrain and predict: the geo stack plus PyTorch (conda-forge's pytorch picks a CUDA build\n"
            f"when a GPU driver is present) and the CPU inference engines.\n{RULE_ENV_IMPORTS}"
        ),
        packages=TORCH_PACKAGES,
    )
    return [full, geo, torch]


def render(env: CondaEnv, pins: dict[str, Pin]) -> str:
    """The YAML text of one environment (written by hand: PyYAML would drop the comments)."""
    conda_lines: list[tuple[str, str]] = [(f"python={PYTHON_SERIES}", f"{PYTHON_SERIES}.*, the tested venv's series")]
    pip_lines: list[tuple[str, str]] = []
    channels = [CONDA_FORGE]
    for name in env.packages:
        key = canonicalize_name(name)
        if key not in pins:
            raise KeyError(f"{env.path}: {name} has no pin in requirements/pins.txt")
        package = conda_package(key)
        note = NOTES.get(key, "")
        if package.channel == PYPI:
            pip_lines.append((f"{package.name}=={pins[key].version}", note))
            continue
        prefix = "" if package.channel == CONDA_FORGE else f"{package.channel}::"
        if package.channel not in channels:
            channels.append(package.channel)
        conda_lines.append((f"{prefix}{package.name}=={pins[key].version}", note))
    if pip_lines:
        conda_lines.append(("pip", ""))

    def item(indent: str, spec: str, note: str) -> str:
        return f"{indent}- {spec}" + (f"  # {note}" if note else "")

    out = [f"# {line}".rstrip() for line in env.header.splitlines()]
    if env.name:
        out.append(f"name: {env.name}")
    out.append("channels:")
    out += [f"  - {channel}" for channel in channels + ["nodefaults"]]
    out.append("dependencies:")
    out += [item("  ", spec, note) for spec, note in conda_lines]
    if pip_lines:
        out.append("  - pip:")
        out += [item("      ", spec, note) for spec, note in pip_lines]
    return "\n".join(out) + "\n"


def rendered() -> dict[Path, str]:
    """Every generated file's path and expected content."""
    pins = read_pins()
    return {ROOT / env.path: render(env, pins) for env in environments()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    found = problems()
    if found:
        print("requirements/pins.txt is inconsistent:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    stale = 0
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        stale += 1
        if args.check:
            rel = str(path.relative_to(ROOT))
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), rel, rel))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print(f"{stale} file(s) stale: run `.venv/bin/python scripts/conda_envs.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
