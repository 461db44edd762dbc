"""The conda files are generated from requirements/pins.txt, the versions the venv is tested with.

Nothing here needs conda or the network: the committed YAML files are compared with what scripts/conda_envs.py
renders, and the pin list with pyproject.toml and the Makefile.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conda_envs", ROOT / "scripts" / "conda_envs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def test_committed_files_are_what_the_generator_writes() -> None:
    for path, text in gen.rendered().items():
        rel = path.relative_to(ROOT)
        assert path.exists(), f"{rel} is missing: run `.venv/bin/python scripts/conda_envs.py`"
        assert path.read_text() == text, f"{rel} is stale: run `.venv/bin/python scripts/conda_envs.py`"


def test_pins_cover_pyproject_and_match_the_makefile() -> None:
    """Every dependency of every group has a pin inside pyproject's range; no stale pins; torch agrees with make."""
    assert gen.problems() == []


def test_generated_files_are_valid_pinned_environments() -> None:
    pins = gen.read_pins()
    for env in gen.environments():
        doc = yaml.safe_load((ROOT / env.path).read_text())
        assert doc["channels"][0] == "conda-forge" and doc["channels"][-1] == "nodefaults"
        specs = [d for d in doc["dependencies"] if isinstance(d, str)]
        pip_specs = next((d["pip"] for d in doc["dependencies"] if isinstance(d, dict)), [])
        for spec in specs + pip_specs:
            if spec in ("pip",) or spec.startswith("python="):
                continue
            name, _, version = spec.rpartition("==")
            assert name and version, f"{env.path}: {spec!r} is not an exact (==) pin"
            assert not re.search(r"[<>~!]", spec), spec
        # every pinned version is the pin list's, whatever the conda name
        for pkg in env.packages:
            key = gen.canonicalize_name(pkg)
            conda = gen.conda_package(key)
            prefix = "" if conda.channel in (gen.CONDA_FORGE, gen.PYPI) else f"{conda.channel}::"
            expected = f"{prefix}{conda.name}=={pins[key].version}"
            assert expected in (pip_specs if conda.channel == gen.PYPI else specs), (env.path, expected)
        assert not any(gen.canonicalize_name(s.split("==")[0]) == "pixeldino" for s in specs + pip_specs)


def test_channels_and_conda_names() -> None:
    full = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = [d for d in full["dependencies"] if isinstance(d, str)]
    assert full["channels"] == ["conda-forge", "bioconda", "nodefaults"]
    assert any(d.startswith("bioconda::snakemake-executor-plugin-slurm==") for d in deps)
    assert any(d.startswith("snakemake==") for d in deps)
    assert any(d.startswith("pytorch==") for d in deps) and not any(d.startswith("torch==") for d in deps)
    assert any(d.startswith("matplotlib-base==") for d in deps)
    assert any(d.startswith("dask-core==") for d in deps)
    pip = next(d["pip"] for d in full["dependencies"] if isinstance(d, dict))
    assert [p.split("==")[0] for p in pip] == ["rustac"]
    for rule_env in ("workflow/envs/geo.yaml", "workflow/envs/torch.yaml"):
        doc = yaml.safe_load((ROOT / rule_env).read_text())
        assert doc["channels"] == ["conda-forge", "nodefaults"]  # nothing from bioconda is needed by the stages


def test_full_environment_mirrors_the_venv() -> None:
    """environment.yml holds what `pip install -e ".[dev]"` installs directly, extras resolved."""
    groups = gen.pyproject_requirements()
    names = gen.venv_packages(groups)
    own = gen.canonicalize_name("pixeldino")
    direct = {gen.canonicalize_name(r.name) for r in groups[""] + groups["dev"]} - {own}
    assert direct <= set(names)
    assert {gen.canonicalize_name(r.name) for r in groups["engines"]} <= set(names)  # via pixeldino[engines]
    assert gen.environments()[0].packages == tuple(names)


def test_rule_envs_are_the_ones_the_rules_use() -> None:
    used = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        used |= {(smk.parent / m).resolve() for m in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text())}
    generated = {(ROOT / env.path).resolve() for env in gen.environments()[1:]}
    assert used and used <= generated


def test_problems_are_found() -> None:
    pins = {k: v for k, v in gen.read_pins().items() if k != "zarr"}
    pins["zarr"] = gen.Pin("zarr", "2.18.0")  # outside pyproject's zarr>=3.0
    pins["left-over"] = gen.Pin("left-over", "1.0")
    groups = gen.pyproject_requirements()
    groups["dask"] = groups["dask"] + [Requirement("brand-new>=1")]
    found = "\n".join(gen.problems(pins, groups))
    assert "brand-new (dask in pyproject.toml) has no pin" in found
    assert "zarr==2.18.0 does not satisfy zarr>=3.0" in found
    assert "pins left-over, which pyproject.toml does not depend on" in found


@pytest.mark.parametrize("line", ["numpy>=2.0", "numpy", "numpy==2.0 ; python_version<'3.12'", "numpy~=2.0"])
def test_pin_list_takes_exact_pins_only(tmp_path: Path, line: str) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text(f"# comment\n{line}\n")
    with pytest.raises(ValueError, match="expected `name==version`"):
        gen.read_pins(pins)


def test_pin_list_rejects_duplicates(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("PyYAML==6.0\npyyaml==6.0.1\n")
    with pytest.raises(ValueError, match="pinned twice"):
        gen.read_pins(pins)


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check` writes nothing and fails on a difference (run on a copy: the real files stay untouched)."""
    copy = tmp_path / "environment.yml"
    copy.write_text((ROOT / "environment.yml").read_text().replace("numpy==", "numpy>="))
    expected = gen.rendered()[ROOT / "environment.yml"]
    monkeypatch.setattr(gen, "rendered", lambda: {copy: expected})
    monkeypatch.setattr(gen, "ROOT", tmp_path)  # the diff header names the file relative to ROOT
    assert gen.main(["--check"]) == 1
    assert "-  - numpy>=" in capsys.readouterr().out
    assert "numpy>=" in copy.read_text()  # untouched


@pytest.mark.workflow
def test_rule_scripts_import_from_the_workflow_root(tmp_path: Path) -> None:
    """What the per-rule envs rely on (and their header and the README say): a `script:` imports a package that sits
    next to the Snakefile, even when Snakemake is started from another directory and nothing is installed."""
    wf = tmp_path / "wf"
    (wf / "workflow" / "scripts").mkdir(parents=True)
    (wf / "rootpkg").mkdir()
    (wf / "rootpkg" / "__init__.py").write_text("WHERE = __file__\n")
    (wf / "Snakefile").write_text(
        textwrap.dedent("""\
        rule a:
            output: "out.txt"
            script: "workflow/scripts/s.py"
        """)
    )
    (wf / "workflow" / "scripts" / "s.py").write_text(
        "import rootpkg\nopen(snakemake.output[0], 'w').write(rootpkg.WHERE)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run(
        [str(snakemake), "-s", str(wf / "Snakefile"), "--cores", "1", "--quiet", "all"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path((elsewhere / "out.txt").read_text()).resolve() == (wf / "rootpkg" / "__init__.py").resolve()
