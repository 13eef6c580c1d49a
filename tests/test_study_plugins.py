"""Analyses from outside robustsig: a real distribution (tests/data/plugin, with its own pyproject.toml) installed
with pip into a temporary folder adds an analysis through the ``robustsig.analyses`` entry-point group, and a second
entry point of it cannot even be imported. Studies run in a fresh interpreter with that folder on its path, as a
user's environment would have them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import robustsig as rs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_helpers import write_checkpoint, write_folder  # noqa: E402

PLUGIN = Path(__file__).resolve().parent / "data" / "plugin"
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin distribution, built and installed by pip (no network: its build backend is the venv's)."""
    source = tmp_path_factory.mktemp("source") / "plugin"
    shutil.copytree(PLUGIN, source)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_folder(root / "data" / "id", per_class=2, seed=0)
    write_checkpoint(root / "ckpt" / "zs.safetensors", "test_vit", seed=1)
    return root


def config(world: Path, name: str, **analyses) -> Path:
    data = {"output_dir": "out", "store_dir": "store", "device": "cpu", "batch_size": 8, "workers": 0,
            "models": [{"name": "zs", "spec": "timm:test_vit@ckpt/zs.safetensors", "backbone": "tiny-vit",
                        "pretraining": "synthetic", "kind": "zero-shot"}],
            "datasets": {"id": {"name": "photos", "kind": "folder", "root": "data/id"}},
            "analyses": {"accuracy": None, "kurtosis": None, **analyses}}
    path = world / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def robustsig(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``robustsig ARGS`` in a fresh interpreter that sees the installed plugin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)])}
    return subprocess.run([sys.executable, "-m", "robustsig", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def steps(process: subprocess.CompletedProcess) -> dict[str, dict]:
    return {step["id"]: step for step in json.loads(process.stdout)["steps"]}


def test_an_installed_analysis_runs_like_a_built_in_one(site, world):
    assert (site / "robustsig_echo-0.1.0.dist-info" / "entry_points.txt").is_file()
    path = config(world, "echo.yaml", echo={"scale": 2.0})
    first = robustsig(site, "study", "run", str(path), "--json")
    assert first.returncode == 0, first.stderr
    assert {step["status"] for step in steps(first).values()} == {"done"}
    assert "echo:zs" in steps(first)
    results = world / "out" / "results"
    h = rs.ActivationStore(world / "store" / "zs" / "photos").read("h").double().numpy()
    rows = (results / "echo.csv").read_text().splitlines()
    assert rows[0] == "model,mean_norm" and rows[1].startswith("zs,")
    assert float(rows[1].split(",")[1]) == pytest.approx(2.0 * np.linalg.norm(h, axis=1).mean(), rel=1e-9)
    assert json.loads((results / "provenance.json").read_text())["tables"]["echo"]["parameters"] == {"scale": 2.0}
    page = (world / "out" / "report" / "report.html").read_text()
    assert '<section id="echo"><h2>Echo: mean norm of h</h2>' in page and 'id="table-echo"' in page
    assert '<section id="broken">' not in page  # an installed analysis the study does not use has no section

    again = robustsig(site, "study", "run", str(path), "--json")
    assert steps(again)["echo:zs"]["status"] == "reused"  # the ledger keeps it like a built-in step
    changed = robustsig(site, "study", "run", str(config(world, "echo3.yaml", echo={"scale": 3.0})), "--json")
    assert [step for step, record in steps(changed).items() if record["status"] == "done"] == ["echo:zs"]
    assert float((results / "echo.csv").read_text().splitlines()[1].split(",")[1]) == pytest.approx(
        3.0 * np.linalg.norm(h, axis=1).mean(), rel=1e-9)


def test_a_bad_section_of_an_installed_analysis_is_a_config_error_naming_it(site, world):
    checked = robustsig(site, "study", "validate", str(config(world, "bad.yaml", echo={"scale": -1, "colour": 1})))
    assert checked.returncode == 2
    assert ("analyses.echo.scale: expected greater than 0; got -1 (analysis from plugin robustsig-echo 0.1.0)"
            in checked.stderr)
    assert "analyses.echo.colour: unknown key; expected one of: enabled, scale, fail" in checked.stderr


def test_a_broken_plugin_fails_its_own_steps_and_the_built_in_analyses_run(site, world):
    failing = robustsig(site, "study", "run", str(config(world, "fail.yaml", echo={"fail": True}, broken={})),
                        "--json")
    assert failing.returncode != 0
    found = steps(failing)
    assert found["accuracy:zs"]["status"] in ("done", "reused") and found["kurtosis:zs"]["status"] in ("done",
                                                                                                     "reused")
    assert found["echo:zs"]["status"] == "failed"
    assert found["echo:zs"]["message"] == ("RuntimeError: the echo step was told to fail (an unexpected error: the "
                                           f"traceback is in {world / 'out' / 'results' / 'run.log'}; if it is a "
                                           "memory error, lower batch_size in the config) (a step of the 'echo' "
                                           "analysis from plugin robustsig-echo 0.1.0)")
    assert found["plugin:broken"]["status"] == "failed"
    assert "plugin robustsig-echo 0.1.0" in found["plugin:broken"]["message"]
    assert "ImportError: robustsig_broken needs the package 'not-installed-anywhere'" in found["plugin:broken"][
        "message"]
    page = (world / "out" / "report" / "report.html").read_text()
    assert '<section id="broken">' in page and "is broken and did not run" in page
    assert '<section id="accuracy">' in page
