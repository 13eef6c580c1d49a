"""``robustsig study run`` when things go wrong: a model that cannot be built (reported, the others finish, the run
exits non-zero, a fixed model is picked up by the rerun), an interrupted run (resumed without redoing anything), a
checkpoint changed in place (its stores are re-extracted into), a refit baseline line, --json, bad options."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import oracles
import robustsig as rs
from robustsig._locks import FileLock
from robustsig.runner import RUN_LOCK, run_study
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.importance import ImportanceTask
from robustsig.study.analyses.kurtosis import KurtosisRow

from cli_helpers import run_cli
from study_helpers import build_world, counting_forwards, study_data, write_checkpoint, write_config

TINY = {"name": "zs", "spec": "timm:test_vit@ckpt/zs.safetensors", "backbone": "tiny-vit", "pretraining": "synthetic",
        "kind": "zero-shot"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world"))


def config(root: Path, name: str, models: list[dict], analyses: dict, **top) -> Path:
    """A study of ``models`` in ``root`` writing to ``out-NAME``; every study of the module shares one store
    folder (the zs model's stores are extracted once)."""
    data = study_data(root, **analyses)
    data["analyses"] = analyses
    data.update(models=models, output_dir=f"out-{name}", **top)
    return write_config(root, data, f"{name}.yaml")


def test_a_broken_model_is_reported_and_the_others_finish(world, capsys):
    (world / "ckpt" / "broken.safetensors").write_bytes(b"these bytes are not a checkpoint")
    broken = {"name": "broken", "spec": "timm:test_resnet@ckpt/broken.safetensors", "backbone": "tiny-resnet",
              "pretraining": "synthetic", "kind": "finetuned"}
    path = config(world, "broken", [TINY, broken], {"accuracy": None, "kurtosis": None})
    code, out, err = run_cli(capsys, "study", "run", str(path))
    assert code == 1
    assert "[extract] broken on photos: FAILED: model 'broken' (timm:test_resnet@" in err
    assert "cannot be built" in err
    assert "[accuracy] broken: not run: it needs extract:broken:photos, which did not finish" in err
    assert "3 step(s) failed and 2 could not run (models: broken); the other results are complete:" in err
    assert "fix these and rerun the same command" in err
    results = rs.Results(world / "out-broken" / "results")
    assert {row.model for row in results.read(AccuracyRow)} == {"zs"}
    assert {row.model for row in results.read(KurtosisRow)} == {"zs"}
    table = out.splitlines()
    assert table[2].split()[0] == "zs" and len(table[2].split()) == 5  # model, ACC(I), ACC(S), ER, kurtosis
    assert table[3].split() == ["broken"]
    assert "report: " in out and (world / "out-broken" / "report" / "report.html").is_file()

    write_checkpoint(world / "ckpt" / "broken.safetensors", "test_resnet", seed=3)
    code, out, err = run_cli(capsys, "study", "run", str(path))
    assert code == 0, err
    assert "[accuracy] zs: unchanged since the last run" in err
    assert "[accuracy] broken: ACC(I)" in err
    assert {row.model for row in results.read(AccuracyRow)} == {"zs", "broken"}


def test_an_interrupted_run_resumes_without_redoing_anything(world, monkeypatch):
    path = config(world, "interrupted", [TINY], {"accuracy": None, "kurtosis": None, "importance": None})

    def interrupt(self, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImportanceTask, "compute", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, progress=False)
    monkeypatch.undo()
    log = (world / "out-interrupted" / "results" / "run.log").read_text()
    assert "[importance] zs on photos: interrupted; rerun the same command to resume" in log
    with counting_forwards() as images:
        resumed = run_study(path, progress=False)
    assert images == [] and resumed.ok
    assert resumed.ran() == ["importance:zs"]
    assert {step.status for step in resumed.steps if step.id != "importance:zs"} == {"reused"}


def test_a_checkpoint_changed_in_place_is_re_extracted(world):
    shutil.copy(world / "ckpt" / "zs.safetensors", world / "ckpt" / "moving.safetensors")
    moving = {**TINY, "name": "moving", "spec": "timm:test_vit@ckpt/moving.safetensors"}
    path = config(world, "moving", [moving], {"accuracy": None})
    first = run_study(path, progress=False)
    assert first.ok and sorted(first.ran("extract")) == [f"extract:moving:{d}" for d in ("photos", "shift-a",
                                                                                          "shift-b")]
    write_checkpoint(world / "ckpt" / "moving.safetensors", "test_vit", seed=7)  # other weights, same file
    second = run_study(path, progress=False)
    assert second.ok and len(second.ran("extract")) == 3 and second.ran("accuracy") == ["accuracy:moving"]
    log = (world / "out-moving" / "results" / "run.log").read_text()
    assert "[extract] moving on photos: the store in" in log
    assert "was made for other inputs (model.fingerprint: stored" in log
    assert "re-extracting into it (the config is the source of truth)" in log
    store = rs.ActivationStore(world / "store" / "moving" / "photos")
    fresh = rs.load_classifier(f"timm:test_vit@{world / 'ckpt' / 'moving.safetensors'}", device="cpu")
    assert store.manifest["key"]["model"]["fingerprint"] == fresh.fingerprint()
    expected = oracles.top1(store.read("logits"), store.read("labels"))
    rows = rs.Results(world / "out-moving" / "results").read(AccuracyRow)
    assert [row.accuracy for row in rows if row.dataset == "photos"] == [pytest.approx(expected, abs=1e-15)]


def test_a_refit_baseline_and_json_output(world, capsys):
    (world / "baseline.csv").write_text("model,acc_id,acc_shift\na,0.5,0.3\nb,0.6,0.35\nc,0.7,0.5\n")
    path = config(world, "json", [TINY], {"accuracy": None}, baseline={"fit_csv": "baseline.csv"})
    code, out, err = run_cli(capsys, "study", "run", str(path), "--json", "--device", "cpu")
    assert code == 0, err
    document = json.loads(out)
    assert document["ok"] and document["counts"]["failed"] == 0
    assert [row["model"] for row in document["summary"]] == ["zs"]
    b1, b0 = oracles.refit_line([0.5, 0.6, 0.7], [0.3, 0.35, 0.5])
    row = rs.Results(world / "out-json" / "results").read(RobustnessRow)[0]
    assert (row.b1, row.b0) == (pytest.approx(b1, abs=1e-12), pytest.approx(b0, abs=1e-12))
    assert row.er == pytest.approx(oracles.effective_robustness(row.acc_id, row.acc_shift, b1, b0), abs=1e-12)
    assert document["summary"][0]["er"] == row.er
    assert "[baseline] ER from logit(ACC(S)) =" in (world / "out-json" / "results" / "run.log").read_text()
    # no analysis of these studies reads Broden, so no model was run on it
    assert sorted(path.name for path in (world / "store" / "zs").iterdir()) == ["photos", "shift-a", "shift-b"]


def test_bad_inputs_are_refused_before_anything_runs(world, capsys):
    path = config(world, "bad", [TINY], {"accuracy": None},
                  datasets={"id": {"name": "photos", "kind": "folder", "root": "data/no-such-folder"}})
    code, _, err = run_cli(capsys, "study", "run", str(path))
    assert code == 2 and "datasets.id.root:" in err and "no-such-folder does not exist" in err
    good = config(world, "good", [TINY], {"accuracy": None})
    code, _, err = run_cli(capsys, "study", "run", str(good), "--only", "kurtosis,zz")
    assert code == 2 and "'zz' is neither an analysis" in err
    code, _, err = run_cli(capsys, "study", "run", str(good), "--device", "gpu")
    assert code == 2 and "--device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got 'gpu'" in err
    assert not (world / "out-good").exists() and not (world / "out-bad").exists()


def test_a_second_run_of_the_same_study_is_refused_at_once(world, capsys):
    """Two runs on one output folder would interleave their results: while one holds the run's lock (another
    process, here one that only holds it), a second is refused before it does anything, naming the first."""
    path = config(world, "twice", [TINY], {"accuracy": None})
    results = world / "out-twice" / "results"
    results.mkdir(parents=True)
    hold = ("import sys, time; from robustsig._locks import FileLock; lock = FileLock(sys.argv[1]); "
            "lock.acquire('x', 'y'); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(results / RUN_LOCK)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(rs.InputError, match=rf"process {holder.pid} on \S+ is running the study in "
                                                rf"{re.escape(str(world / 'out-twice'))}; wait for it or give this run "
                                                "another output_dir"):
            run_study(path, progress=False)
        code, _, err = run_cli(capsys, "study", "run", str(path))
        assert code == 2 and f"process {holder.pid}" in err
        assert sorted(entry.name for entry in results.iterdir()) == [RUN_LOCK]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    lock = FileLock(results / RUN_LOCK)  # a holder killed with -9 leaves no stale lock
    lock.acquire("running the study", "wait")
    lock.release()


def test_a_shift_set_missing_class_folders_needs_the_explicit_option(world, capsys):
    """An ImageNet-R download with 2 of its 200 class folders is refused, naming the missing wnids; with
    allow_missing_classes it is scored on the 2 classes present and the results and report say so."""
    from robustsig.data.classes import subset_wnids

    from imagefiles import write_image

    wnids = subset_wnids("imagenet-r")
    for k, wnid in enumerate(wnids[:2]):
        for i in range(2):
            write_image(world / "data" / "imagenet-r" / wnid / f"{i}.jpg", seed=50 + 2 * k + i)
    mnv2 = {"name": "mnv2", "spec": "bundled:mobilenet_v2", "backbone": "MobileNetV2", "pretraining": "imagenet-1k",
            "kind": "supervised"}
    shift = {"kind": "imagenet-r", "root": "data/imagenet-r"}
    datasets = {"id": {"name": "photos", "kind": "folder", "root": "data/id"}, "shift": [shift]}
    refused = config(world, "partial-r", [mnv2], {"accuracy": None}, datasets=datasets)
    code, _, err = run_cli(capsys, "study", "run", str(refused))
    assert code == 1 and "198 of its 200 class folders (wnids) are missing" in err and wnids[2] in err
    assert "allow_missing_classes" in err
    datasets["shift"] = [{**shift, "options": {"allow_missing_classes": True}}]
    allowed = config(world, "partial-r", [mnv2], {"accuracy": None}, datasets=datasets)
    code, _, err = run_cli(capsys, "study", "run", str(allowed))
    assert code == 0, err
    results = rs.Results(world / "out-partial-r" / "results")
    parameters = results.provenance()["tables"]["robustness"]["parameters"]
    assert parameters["shift_sets"] == {"imagenet-r": "imagenet-r"} and parameters["paper_shift_sets"] is False
    assert parameters["missing_classes"] == {"imagenet-r": list(wnids[2:])}
    assert results.provenance()["tables"]["accuracy"]["parameters"]["missing_classes"] == parameters["missing_classes"]
    page = (world / "out-partial-r" / "report" / "report.html").read_text()
    assert "imagenet-r, 198 missing (" + ", ".join(wnids[2:12]) + ", ...)" in page
