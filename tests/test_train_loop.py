"""The training loop on a tiny classifier and real image files: the loss goes down, a run killed mid-epoch (an
exception at step k, and a real SIGKILL of a subprocess) resumes to bit-identical weights and log, checkpoints are
plain tensors and containers, and bad set-ups fail before training with errors that say what to change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.train.loop import CHECKPOINT_NAME, LOG_COLUMNS, train_classifier
from robustsig.train.recipes import load_recipe
from robustsig.train.state import load_train_state

from train_helpers import tiny_classifier, write_colour_folder

pytestmark = [pytest.mark.filterwarnings("ignore:this classifier records no architecture"),
              pytest.mark.usefixtures("one_thread")]
# 24 images, batches of 4: 6 steps per epoch
RECIPE = dict(epochs=3, batch_size=4, lr=0.05, warmup_steps=2, lr_milestones=[1, 2], label_smoothing=0.0)




@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _log_rows(path: Path) -> list[list[str]]:
    """The CSV rows without the wall-clock column."""
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(LOG_COLUMNS)
    return [line.split(",")[:-1] for line in lines[1:]]


@pytest.fixture(scope="module")
def reference(colours, tmp_path_factory):
    """An uninterrupted run with two DataLoader workers (the resumed runs below use none)."""
    clf = tiny_classifier()
    out = tmp_path_factory.mktemp("reference")
    result = train_classifier(clf, rs.open_dataset("folder", colours), load_recipe("supervised", **RECIPE), out,
                              workers=2, checkpoint_every=4)
    return clf, result


def test_loss_goes_down_and_the_log_has_one_row_per_epoch(reference):
    clf, result = reference
    losses = [row["loss"] for row in result.history]
    assert losses[0] > 2 * losses[-1] and losses == sorted(losses, reverse=True)
    assert result.history[-1]["accuracy"] == 1.0  # three colours: separable
    rows = _log_rows(result.log_path)
    assert [row[:2] for row in rows] == [["1", "6"], ["2", "12"], ["3", "18"]]
    assert [float(row[2]) for row in rows] == losses  # floats written with round-trip precision
    assert [float(row[3]) for row in rows] == [row["accuracy"] for row in result.history]
    assert [float(row[4]) for row in rows] == pytest.approx([0.05, 0.005, 0.0005])  # last lr of each epoch
    assert [row[5:7] for row in rows] == [["24", "0"]] * 3
    assert (result.steps, result.steps_per_epoch, result.resumed_from_step, result.model_path) == (18, 6, None, None)
    assert not clf.training


@pytest.mark.parametrize("stop, resume, position, logged", [
    (9, 8, (1, 2, 8), 1),  # mid-epoch: epoch 2, after its batch 2
    (13, 12, (1, 6, 12), 2),  # checkpointed after the last batch of epoch 2, before its log row (written, then lost)
])
def test_exception_mid_epoch_resumes_to_identical_weights(reference, colours, tmp_path, stop, resume, position,
                                                          logged):
    expected, reference_result = reference
    recipe = load_recipe("supervised", **RECIPE)

    class Stop(Exception):
        pass

    def stop_at(step: int) -> None:
        if step == stop:
            raise Stop

    with pytest.raises(Stop):
        train_classifier(tiny_classifier(), rs.open_dataset("folder", colours), recipe, tmp_path, workers=0,
                         checkpoint_every=4, on_step=stop_at)
    state = load_train_state(tmp_path / CHECKPOINT_NAME)
    assert (state.position.epoch, state.position.batch, state.position.step) == position
    assert state.epoch_totals.count == 4 * position[1] and len(state.history) == 1
    assert len(_log_rows(tmp_path / "train_log.csv")) == logged

    resumed = tiny_classifier(seed=5)  # other initial weights: they must all come from the checkpoint
    result = train_classifier(resumed, rs.open_dataset("folder", colours), recipe, tmp_path, workers=0,
                              checkpoint_every=4)
    assert result.resumed_from_step == resume and result.steps == 18
    assert _states_equal(resumed.state_dict(), expected.state_dict())
    assert _log_rows(result.log_path) == _log_rows(reference_result.log_path)
    final = load_train_state(tmp_path / CHECKPOINT_NAME)
    assert final.position.step == 18 and _states_equal(final.model, expected.state_dict())
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_sigkill_of_a_training_process_resumes_to_identical_weights(reference, colours, tmp_path):
    """A real ``kill -9`` of a process in the middle of epoch 2 (3 steps after its last checkpoint)."""
    expected, _ = reference
    marker = tmp_path / "at-step-11"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, warnings
        warnings.simplefilter("ignore")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch, robustsig as rs
        from robustsig.train.loop import train_classifier
        from robustsig.train.recipes import load_recipe
        from train_helpers import tiny_classifier
        torch.set_num_threads(1)

        def hang_at_step_11(step):
            if step == 11 and sys.argv[1] == "hang":
                open({str(marker)!r}, "w").close()
                time.sleep(600)

        train_classifier(tiny_classifier(seed=int(sys.argv[2])), rs.open_dataset("folder", {str(colours)!r}),
                         load_recipe("supervised", **{RECIPE!r}), {str(tmp_path / "out")!r}, workers=0,
                         checkpoint_every=4, on_step=hang_at_step_11)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(rs.__file__).parents[1])}
    process = subprocess.Popen([sys.executable, str(script), "hang", "0"], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, "the training process ended before it was killed"
            assert time.monotonic() < deadline, "the training process did not reach step 11"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert load_train_state(tmp_path / "out" / CHECKPOINT_NAME).position.step == 8
    done = subprocess.run([sys.executable, str(script), "resume", "9"], env=env, timeout=120, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    final = load_train_state(tmp_path / "out" / CHECKPOINT_NAME)
    assert final.position.step == 18
    assert _states_equal(final.model, expected.state_dict())


def test_checkpoint_holds_only_tensors_and_plain_containers(reference):
    _, result = reference
    document = torch.load(result.checkpoint_path, weights_only=True)  # would raise on any other object

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (torch.Tensor, str, int, float, bool))

    assert plain(document)
    assert document["format"] == "robustsig.train-state" and document["position"] == {"epoch": 3, "batch": 0,
                                                                                        "step": 18}
    assert set(document) >= {"model", "optimizer", "schedule", "scaler", "rng", "recipe", "identity", "history"}
    assert document["optimizer"]["state"][0]["step"].item() == 18  # AdamW's step count
    assert document["schedule"] == {"kind": "step", "step": 18, "lr": pytest.approx(5e-4)}
    assert document["scaler"] == {} and document["rng"]["seed"] == 0
    assert document["identity"]["data"]["num_samples"] == 24 and document["identity"]["head"] == [3, 8]


def test_another_recipe_or_dataset_is_refused_and_restart_starts_over(reference, colours, tmp_path):
    _, result = reference
    out = result.out_dir
    with pytest.raises(rs.InputError, match=r"is the checkpoint of another run \(recipe lr: 0.05 in the checkpoint, "
                                            r"0.02 now\); pass --restart"):
        train_classifier(tiny_classifier(), rs.open_dataset("folder", colours),
                         load_recipe("supervised", **{**RECIPE, "lr": 0.02}), out, workers=0)
    fewer = write_colour_folder(tmp_path / "fewer", per_class=4)
    with pytest.raises(rs.InputError, match="num_samples"):
        train_classifier(tiny_classifier(), rs.open_dataset("folder", fewer), load_recipe("supervised", **RECIPE),
                         out, workers=0)
    restarted = train_classifier(tiny_classifier(), rs.open_dataset("folder", fewer),
                                 load_recipe("supervised", **{**RECIPE, "epochs": 2, "lr_milestones": [1]}),
                                 tmp_path / "restart", workers=0, restart=True)
    assert restarted.resumed_from_step is None and restarted.steps == 6


def test_finished_run_started_again_changes_nothing(reference, colours):
    expected, result = reference
    clf = tiny_classifier(seed=3)
    again = train_classifier(clf, rs.open_dataset("folder", colours), load_recipe("supervised", **RECIPE),
                             result.out_dir, workers=0)
    assert again.resumed_from_step == 18 and again.steps == 18 and again.history == result.history
    assert _states_equal(clf.state_dict(), expected.state_dict())


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_a_gpu(colours, tmp_path):
    recipe = load_recipe("finetune", epochs=1, batch_size=8, lr=0.01, warmup_steps=0, precision="bf16")
    result = train_classifier(tiny_classifier(), rs.open_dataset("folder", colours), recipe, tmp_path / "bf16",
                              workers=0, checkpoint_every=0)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
    if not torch.cuda.is_available():
        with pytest.raises(rs.InputError, match="precision 'fp16' needs a CUDA GPU"):
            train_classifier(tiny_classifier(), rs.open_dataset("folder", colours),
                             load_recipe("finetune", precision="fp16", batch_size=4), tmp_path / "fp16", device="cpu")


def test_bad_set_ups_fail_before_training(colours, tmp_path, monkeypatch):
    dataset = rs.open_dataset("folder", colours)
    with pytest.raises(rs.InputError, match="has 24 images, fewer than one global batch of 32"):
        train_classifier(tiny_classifier(), dataset, load_recipe("finetune", batch_size=32), tmp_path)
    with pytest.raises(rs.InputError, match=r"labels \[2\] outside the head's 2 outputs"):
        train_classifier(tiny_classifier(num_classes=2), dataset, load_recipe("finetune", batch_size=4), tmp_path)
    loose = tmp_path / "loose"
    write_colour_folder(tmp_path / "tmp", per_class=2)
    loose.mkdir()
    for path in (tmp_path / "tmp").rglob("*.png"):
        path.rename(loose / f"{path.parent.name}-{path.name}")
    with pytest.raises(rs.InputError, match="unlabelled images"):
        train_classifier(tiny_classifier(), rs.open_dataset("folder", loose), load_recipe("finetune", batch_size=2),
                         tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")  # an uneven split is refused before any process group is joined
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(rs.InputError, match="must split evenly over the 3 processes"):
        train_classifier(tiny_classifier(), dataset, load_recipe("finetune", batch_size=4), tmp_path, device="cpu")
    assert not (tmp_path / CHECKPOINT_NAME).exists()
