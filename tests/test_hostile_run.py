"""Hostile inputs to running robustsig (issue 13): a model with NaN weights, ``--overwrite`` next to a user's files,
YAML alias bombs, non-finite ER parameters, a full disk and ``--out`` on a file, file modes, kill leftovers (a lock
held by orphaned workers, temporary files), and ``study validate`` on option paths."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import robustsig as rs
from robustsig._atomic import TEMP_PREFIX, process_alive, write_text_atomic
from robustsig.errors import InputError
from robustsig.runner import run_study
from robustsig.study.analyses.accuracy import AccuracyRow

from cli_helpers import run_cli
from extract_helpers import image_folder, tiny_classifier
from study_helpers import build_world, study_data, write_config

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
TINY = {"name": "zs", "spec": "timm:test_vit@ckpt/zs.safetensors", "backbone": "tiny-vit", "pretraining": "synthetic",
        "kind": "zero-shot"}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*randomly initialised")]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world"))


def study(root: Path, name: str, models: list[dict], analyses: dict, **top) -> Path:
    data = study_data(root, **analyses)
    data["analyses"] = analyses
    data.update(models=models, output_dir=f"out-{name}", **top)
    return write_config(root, data, f"{name}.yaml")


def nan_classifier():
    """The tiny classifier with one conv weight NaN (its h and logits are all NaN)."""
    classifier = tiny_classifier()
    with torch.no_grad():
        classifier.encoder.conv2.weight[0, 0, 0, 0] = float("nan")
    return classifier


# --- 3: non-finite activations are refused ----------------------------------------------------------------
def test_a_model_with_a_nan_weight_is_refused_at_extraction(tmp_path):
    dataset = image_folder(tmp_path / "images", 6)
    with pytest.raises(rs.RobustsigError, match=r"non-finite .*'h'") as caught:
        rs.extract(nan_classifier(), dataset, tmp_path / "store", batch_size=4, num_workers=0, progress=False)
    assert "test:tiny@0" in str(caught.value)  # the model is named
    assert not list((tmp_path / "store").glob("shard-*"))
    # a layer tap is named by its name
    classifier = tiny_classifier()
    with torch.no_grad():
        classifier.encoder.conv1.bias[0] = float("inf")
    with pytest.raises(rs.RobustsigError, match=r"layer 'conv1'"):
        rs.extract(classifier, dataset, tmp_path / "store2", layers=["conv1"], batch_size=4, num_workers=0,
                   progress=False)


def test_float16_overflow_is_refused_too(tmp_path):
    classifier = tiny_classifier()
    with torch.no_grad():
        classifier.head.bias[0] = 1e6  # finite in float32, inf in float16
    with pytest.raises(rs.RobustsigError, match=r"'logits'.*float16"):
        rs.extract(classifier, image_folder(tmp_path / "images", 4), tmp_path / "store", dtype="float16",
                   batch_size=4, num_workers=0, progress=False)


def test_a_nan_model_fails_on_its_own_in_a_study(world, capsys):
    from study_helpers import write_checkpoint

    path = write_checkpoint(world / "ckpt" / "nan.safetensors", "test_resnet", seed=5)
    classifier = rs.load_classifier(f"timm:test_resnet@{path}", device="cpu")
    conv = next(m for m in classifier.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0] = float("nan")
    rs.save_classifier(classifier, path)
    nan = {"name": "nan", "spec": "timm:test_resnet@ckpt/nan.safetensors", "backbone": "tiny-resnet",
           "pretraining": "synthetic", "kind": "finetuned"}
    config = study(world, "nan", [TINY, nan], {"accuracy": None})
    code, _, err = run_cli(capsys, "study", "run", str(config))
    assert code == 1
    assert "[extract] nan on photos: FAILED:" in err and "non-finite" in err
    rows = rs.Results(world / "out-nan" / "results").read(AccuracyRow)
    assert {row.model for row in rows} == {"zs"}


def test_extract_command_exits_non_zero_on_a_nan_model(tmp_path, capsys):
    path = tmp_path / "nan.safetensors"
    classifier = rs.load_classifier("timm:test_resnet", device="cpu")
    conv = next(m for m in classifier.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.fill_(float("nan"))
    rs.save_classifier(classifier, path)
    image_folder(tmp_path / "images", 4)
    code, _, err = run_cli(capsys, "extract", f"timm:test_resnet@{path}", f"folder:{tmp_path / 'images'}",
                           "--out", str(tmp_path / "store"), "--workers", "0")
    assert code != 0
    assert "non-finite" in err and "Traceback" not in err


# --- 7: --overwrite removes only robustsig's own files ------------------------------------------------------
def test_overwrite_keeps_a_users_files_and_refuses(tmp_path):
    dataset = image_folder(tmp_path / "images", 6)
    store = tmp_path / "store"
    rs.extract(tiny_classifier(0), dataset, store, batch_size=4, num_workers=0, progress=False)
    (store / "notes.txt").write_text("my notes")
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(InputError, match=r"notes\.txt") as caught:
        rs.extract(tiny_classifier(1), dataset, store, batch_size=4, num_workers=0, overwrite=True, progress=False)
    assert "robustsig" in str(caught.value)
    assert (store / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in store.iterdir()) == before
    (store / "notes.txt").unlink()
    replaced = rs.extract(tiny_classifier(1), dataset, store, batch_size=4, num_workers=0, overwrite=True,
                          progress=False)
    assert replaced.manifest["key"]["model"]["spec"] == "test:tiny@1"


def test_study_re_extraction_keeps_a_users_files(world):
    import shutil

    from study_helpers import write_checkpoint

    shutil.copy(world / "ckpt" / "zs.safetensors", world / "ckpt" / "moved.safetensors")
    moved = {**TINY, "name": "moved", "spec": "timm:test_vit@ckpt/moved.safetensors"}
    path = study(world, "moved", [moved], {"accuracy": None})
    assert run_study(path, progress=False).ok
    notes = world / "store" / "moved" / "photos" / "notes.txt"
    notes.write_text("keep me")
    write_checkpoint(world / "ckpt" / "moved.safetensors", "test_vit", seed=9)
    second = run_study(path, progress=False)
    assert not second.ok
    assert any("notes.txt" in step.message for step in second.failures)
    assert notes.read_text() == "keep me"


# --- 10: YAML alias bombs ---------------------------------------------------------------------------------
BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def test_the_yaml_loader_refuses_alias_bombs_and_keeps_shared_values():
    from robustsig._yaml import MAX_ALIAS_VALUES, safe_load

    assert len(BILLION_LAUGHS.encode()) < 600
    with pytest.raises(InputError, match=rf"bomb.yaml is not valid YAML \(line 5, .*repeat more than "
                                         rf"{MAX_ALIAS_VALUES} values"):
        safe_load(BILLION_LAUGHS, "bomb.yaml")
    # what yaml.safe_dump writes for a value shared by several keys is read back
    shared = {"class_map": "map.json"}
    text = yaml.safe_dump({"a": shared, "b": shared, "c": [shared] * 50})
    assert "*id001" in text
    assert safe_load(text, "fine.yaml") == {"a": shared, "b": shared, "c": [shared] * 50}
    # the bound counts every value an alias repeats, nested aliases expanded
    wide = "a: &a [" + ", ".join(["x"] * 99) + "]\nb: [" + ", ".join(["*a"] * (MAX_ALIAS_VALUES // 100)) + "]\n"
    assert len(safe_load(wide, "wide.yaml")["b"]) == MAX_ALIAS_VALUES // 100  # exactly the bound
    with pytest.raises(InputError, match="repeat more than"):
        safe_load(wide.replace("b: [", "b: [*a, "), "wide.yaml")


def test_study_validate_and_run_refuse_alias_bombs_and_accept_shared_values(world, capsys):
    data = study_data(world, accuracy=None)
    data["analyses"] = {"accuracy": None}
    data["models"] = [TINY]
    options = {"strict": False}
    for entry in [data["datasets"]["id"], *data["datasets"]["shift"]]:
        entry["options"] = options  # one object: safe_dump writes an anchor and aliases
    shared = world / "shared.yaml"
    shared.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "*id001" in shared.read_text()
    code, out, err = run_cli(capsys, "study", "validate", str(shared))
    assert code == 0, err
    bomb = world / "bomb.yaml"
    bomb.write_text(shared.read_text() + "x-bomb:\n" + textwrap.indent(BILLION_LAUGHS, "  "))
    for command in ("validate", "run"):
        code, _, err = run_cli(capsys, "study", command, str(bomb))
        assert code == 2 and "bomb.yaml is not valid YAML" in err and "repeat more than" in err, (command, err)


def test_recipe_files_and_dataset_options_refuse_alias_bombs(tmp_path):
    from robustsig.data.registry import parse_dataset_options
    from robustsig.train.recipes import load_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1.0e-5\nx-bomb:\n" + textwrap.indent(BILLION_LAUGHS, "  "))
    with pytest.raises(InputError, match="repeat more than"):
        load_recipe("finetune", recipe)
    # a -O value is one YAML scalar; anything else (an alias bomb included) is kept as the string given
    flat = BILLION_LAUGHS.replace("\n", ", ").rstrip(", ")
    assert parse_dataset_options([f"x={{{flat}}}", "workers=2"]) == {"x": f"{{{flat}}}", "workers": 2}


# --- 11: non-finite ER parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("option", [("--b1", "nan"), ("--b0", "inf"), ("--b1", "-inf")])
def test_er_refuses_non_finite_line_parameters(capsys, option):
    code, out, err = run_cli(capsys, "er", "--id", "0.7", "--shift", "0.5", *option)
    assert code == 2, out
    assert option[0].lstrip("-") in err and "finite" in err


def test_er_function_refuses_non_finite_parameters():
    with pytest.raises(InputError, match="b1.*finite"):
        rs.effective_robustness(0.7, 0.5, b1=float("nan"))
    with pytest.raises(InputError, match="b0.*finite"):
        rs.effective_robustness(0.7, 0.5, b0=float("inf"))


def test_study_config_refuses_a_nan_baseline(world, capsys):
    path = study(world, "nanline", [TINY], {"accuracy": None}, baseline={"b1": 0.76, "b0": -1.49})
    path.write_text(path.read_text().replace("b1: 0.76", "b1: .nan"))
    assert "b1: .nan" in path.read_text()
    code, _, err = run_cli(capsys, "study", "validate", str(path))
    assert code == 2 and "baseline.b1" in err


# --- 12: disk full and --out on a file --------------------------------------------------------------------
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_extract_on_a_full_disk_says_so(tmp_path, capsys, monkeypatch):
    image_folder(tmp_path / "images", 4)
    monkeypatch.setattr("robustsig._atomic._sync_file", disk_full)
    code, _, err = run_cli(capsys, "extract", "timm:test_resnet", f"folder:{tmp_path / 'images'}", "--out",
                           str(tmp_path / "store"), "--workers", "0")
    assert code == 1
    assert "Traceback" not in err and "OSError" not in err
    assert "No space left on device" in err and str(tmp_path / "store") in err
    assert len(err.strip().splitlines()) == 1


def test_out_on_an_existing_file_says_so(tmp_path, capsys):
    image_folder(tmp_path / "images", 4)
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "extract", "timm:test_resnet", f"folder:{tmp_path / 'images'}", "--out",
                           str(tmp_path / "file"), "--workers", "0")
    assert code == 1
    assert "FileExistsError" not in err and "Traceback" not in err
    assert str(tmp_path / "file") in err and "not a folder" in err


def test_study_run_on_a_full_disk_says_so(world, capsys, monkeypatch):
    path = study(world, "full", [TINY], {"accuracy": None})
    monkeypatch.setattr("robustsig._atomic._sync_file", disk_full)
    code, _, err = run_cli(capsys, "study", "run", str(path))
    assert code == 1
    assert "Traceback" not in err and "OSError" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {world / 'out-full' / 'results'}")
    assert "No space left on device" in last


def test_run_log_is_never_left_cut_mid_line(tmp_path, monkeypatch):
    from robustsig.study.runlog import RunLog

    writes = []

    def half_then_full(fd, data):  # the fourth line meets a full disk half way
        writes.append(data)
        if len(writes) > 3:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    monkeypatch.setattr("robustsig.study.runlog._write", half_then_full)
    log = RunLog(tmp_path / "run.log", echo=False)
    for i in range(3):
        log.line("step", f"model {i}", "done")
    with pytest.raises(OSError, match="run.log") as caught:
        log.line("step", "model 3", "done, with a long message " * 5)
    log.close()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "run.log")
    text = (tmp_path / "run.log").read_text()
    assert text.endswith("\n") and [line.split(" ", 1)[1] for line in text.splitlines()] == [
        f"[step] model {i}: done" for i in range(3)]


def test_a_failed_write_in_a_study_step_names_the_file(world, monkeypatch):
    from robustsig.study.analyses.accuracy import AccuracyTask

    path = study(world, "stepfull", [TINY], {"accuracy": None})

    def full(self, ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/results/accuracy.csv")

    monkeypatch.setattr(AccuracyTask, "execute", full)
    summary = run_study(path, progress=False)
    assert [step.message for step in summary.failures] == [
        "cannot write /some/results/accuracy.csv: No space left on device; free some space (or write elsewhere) "
        "and rerun: finished work is kept"]
    log = (world / "out-stepfull" / "results" / "run.log").read_text()
    assert "Traceback" not in log


# --- 13: file modes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_files_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.html", "<html></html>")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "report.html").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


# --- 14: kill leftovers -----------------------------------------------------------------------------------
HOLD_LOCK = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from robustsig.extraction.writer import StoreWriter
    writer = StoreWriter(Path(sys.argv[1]), {}, "x", 1, 1)
    writer._take_lock()
    worker = os.fork()
    if worker == 0:          # a DataLoader worker: it inherited the lock file and outlives its parent
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # so that the test does not wait for it through the pipes
        time.sleep(60)
        os._exit(0)
    print(worker, flush=True)
    os._exit(0)              # the main process dies at once (as after kill -9)
    """)


def test_a_lock_is_not_held_by_orphaned_workers(tmp_path):
    dataset = image_folder(tmp_path / "images", 4)
    store = tmp_path / "store"
    store.mkdir()
    holder = subprocess.run([sys.executable, "-c", HOLD_LOCK, str(store)], env=os.environ | {"PYTHONPATH": str(SRC)},
                            capture_output=True, text=True, timeout=120)
    worker = int(holder.stdout)
    try:
        assert process_alive(worker)
        done = rs.extract(tiny_classifier(), dataset, store, batch_size=4, num_workers=0, progress=False)
        assert done.num_rows == 4
        assert process_alive(worker)  # the orphan still runs, with the lock file open
    finally:
        os.kill(worker, signal.SIGKILL)


def test_one_process_cannot_write_a_store_twice_at_once(tmp_path):
    from robustsig.extraction.writer import StoreWriter

    first = StoreWriter(tmp_path, {}, "x", 1, 1)
    first._take_lock()
    with pytest.raises(InputError, match="this process is already writing the store"):
        StoreWriter(tmp_path, {}, "x", 1, 1)._take_lock()
    first.release()
    second = StoreWriter(tmp_path, {}, "x", 1, 1)
    second._take_lock()
    second.release()


def test_a_live_holder_is_still_refused(tmp_path):
    from robustsig.extraction.writer import StoreWriter

    store = tmp_path / "store"
    store.mkdir()
    first = StoreWriter(store, {}, "x", 1, 1)
    first._take_lock()
    script = ("import sys; from pathlib import Path; from robustsig.extraction.writer import StoreWriter\n"
              "try:\n    StoreWriter(Path(sys.argv[1]), {}, 'x', 1, 1)._take_lock()\n"
              "except Exception as error:\n    print(type(error).__name__, error)\n")
    try:
        result = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True,
                                env=os.environ | {"PYTHONPATH": str(SRC)}, timeout=120)
    finally:
        first.release()
    assert result.stdout.startswith(f"InputError process {os.getpid()} on ") and "is writing the store" in \
        result.stdout


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    return int(finished.stdout)


def test_temporary_files_of_a_killed_run_are_swept(world):
    from robustsig._atomic import temporary_name

    path = study(world, "sweep", [TINY], {"accuracy": None})
    assert run_study(path, progress=False).ok
    results = world / "out-sweep" / "results"
    report = world / "out-sweep" / "report"
    pid = dead_pid()
    leftovers = [results / temporary_name("accuracy.csv", pid), report / temporary_name("report.html", pid)]
    live = results / temporary_name("models.csv", os.getpid())  # a writer still running: kept
    foreign = results / ".tmp-users-own-file"
    for file in [*leftovers, live, foreign]:
        file.write_text("partial")
    assert run_study(path, progress=False).ok
    assert not any(file.exists() for file in leftovers)
    assert live.exists() and foreign.exists()


def test_temporary_files_in_a_store_are_swept_under_the_lock(tmp_path):
    from robustsig._atomic import temporary_name

    dataset = image_folder(tmp_path / "images", 6)
    store = tmp_path / "store"
    rs.extract(tiny_classifier(), dataset, store, shard_size=4, batch_size=4, num_workers=0, progress=False)
    leftover = store / temporary_name("shard-000001.safetensors", dead_pid())
    leftover.write_bytes(b"partial")
    rs.extract(tiny_classifier(), dataset, store, shard_size=4, batch_size=4, num_workers=0, progress=False)
    assert not leftover.exists()
    assert not [p for p in store.iterdir() if p.name.startswith(TEMP_PREFIX)]


# --- 15: study validate checks option paths ---------------------------------------------------------------
def test_validate_names_a_missing_class_map(world, capsys):
    path = study(world, "classmap", [TINY], {"accuracy": None})
    data = yaml.safe_load(path.read_text())
    data["datasets"]["id"]["options"] = {"class_map": "no-such-map.json"}
    data["datasets"]["shift"][0]["options"] = {"class_map": {"c0": [1], "c1": [2], "c2": [3], "c3": [4],
                                                             "c4": [5]}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run_cli(capsys, "study", "validate", str(path))
    assert code == 2
    assert "datasets.id.options.class_map" in err and "no-such-map.json does not exist" in err
    assert "every path exists" not in out
    code, out, err = run_cli(capsys, "study", "validate", str(path), "--json")
    assert code == 1
    assert '"datasets.id.options.class_map"' in out


def test_validate_checks_every_path_option(tmp_path):
    from robustsig.study.config import validate_study_config

    config = validate_study_config({
        "output_dir": "out", "store_dir": "store",
        "models": [{"name": "m", "spec": "bundled:mobilenet_v2", "backbone": "b", "pretraining": "p",
                    "kind": "supervised", "classnames": "names.txt"}],
        "datasets": {"id": {"kind": "imagenet", "root": ".", "options": {"ground_truth": "gt.csv"}},
                     "shift": [{"kind": "objectnet", "root": ".", "options": {"mappings": "maps"}}],
                     "broden": {"root": ".", "options": {"cache_dir": "not-checked"}}},
        "analyses": {"accuracy": None}}, base_dir=tmp_path)
    missing = {item.key: item.path for item in config.check_paths()}
    assert missing == {"models[0].classnames": tmp_path / "names.txt",
                       "datasets.id.options.ground_truth": tmp_path / "gt.csv",
                       "datasets.shift[0].options.mappings": tmp_path / "maps"}
