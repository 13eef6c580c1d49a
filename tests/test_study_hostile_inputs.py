"""``study run`` never reuses a result computed from a file that changed since (issue 13, points 1 and 2): a
rewritten image re-extracts its store, a swapped class-map entry re-scores the accuracy, a renamed or relabelled
Broden concept re-probes the AP matrices. The pool is the bundled MobileNetV2 (real ImageNet weights), so the
accuracy of real photos of a cat and of coffee through a class map is a real number that a swap must turn around."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustsig as rs
from robustsig.runner import run_study
from robustsig.study.analyses.accuracy import AccuracyRow
from robustsig.study.config import load_study_config

from study_helpers import write_concept_folder, write_config

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

CAT = [281, 282, 283, 284, 285]
COFFEE = [967, 968, 504]


def crops(photo: np.ndarray, count: int, size: int = 160) -> list[Image.Image]:
    """``count`` different square crops of a photo."""
    height, width = photo.shape[:2]
    side = min(height, width) * 9 // 10
    steps = np.linspace(0, max(height, width) - side, count).astype(int)
    out = []
    for step in steps:
        top, left = (0, step) if width >= height else (step, 0)
        out.append(Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size)))
    return out


@pytest.fixture
def world(tmp_path) -> Path:
    from skimage import data

    for name, photo in (("cat", data.chelsea()), ("coffee", data.coffee())):
        for k, image in enumerate(crops(photo, 3)):
            (tmp_path / "photos" / name).mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / "photos" / name / f"{k}.png")
    (tmp_path / "map.json").write_text(json.dumps({"cat": CAT, "coffee": COFFEE}))
    write_concept_folder(tmp_path / "broden" / "broden1_224")
    data = {
        "output_dir": "out", "store_dir": "store", "device": "cpu", "batch_size": 8, "workers": 0,
        "models": [{"name": "mnv2", "spec": "bundled:mobilenet_v2", "backbone": "MobileNetV2",
                    "pretraining": "imagenet-1k", "kind": "supervised"}],
        "datasets": {"id": {"name": "photos", "kind": "folder", "root": "photos",
                            "options": {"class_map": str(tmp_path / "map.json")}},
                     "broden": {"root": "broden", "options": {"cache_dir": str(tmp_path / "cache"), "workers": 0}}},
        "analyses": {"accuracy": None, "concepts": {"threshold": 0.8, "min_positives": 4, "permutations": 0}},
    }
    write_config(tmp_path, data)
    return tmp_path


def run(world: Path):
    summary = run_study(world / "study.yaml", progress=False)
    assert summary.ok
    return summary


def accuracy(world: Path) -> float:
    config = load_study_config(world / "study.yaml")
    return rs.Results(config.results_dir).read(AccuracyRow)[0].accuracy


def ap_sidecar(world: Path) -> tuple[np.ndarray, dict]:
    folder = load_study_config(world / "study.yaml").results_dir / "concept_ap"
    return np.load(folder / "mnv2_singular.npy"), json.loads((folder / "mnv2_singular.json").read_text())


def test_a_rewritten_image_is_re_extracted(world):
    run(world)
    store_dir = load_study_config(world / "study.yaml").store_dir / "mnv2" / "photos"
    h_before = rs.ActivationStore(store_dir).read("h").clone()
    Image.open(world / "photos" / "coffee" / "0.png").save(world / "photos" / "cat" / "1.png")  # same name
    again = run(world)
    assert ("extract:mnv2:photos", "done") in [(step.id, step.status) for step in again.steps]
    h_after = rs.ActivationStore(store_dir).read("h")
    assert not torch.equal(h_after[1], h_before[1])
    assert torch.allclose(h_after[1], h_after[3])  # cat/1.png now holds the picture of coffee/0.png
    assert torch.equal(h_after[[0, 2, 3, 4, 5]], h_before[[0, 2, 3, 4, 5]])


def test_a_swapped_class_map_entry_re_scores(world):
    run(world)
    right = accuracy(world)
    assert right >= 5 / 6  # real photos, real weights
    (world / "map.json").write_text(json.dumps({"cat": COFFEE, "coffee": CAT}))
    again = run(world)
    assert "accuracy:mnv2" in again.ran()
    assert "extract:mnv2:photos" not in again.ran()  # the images did not change: the store is reused
    assert accuracy(world) <= 1 - right


def rewrite_csv(path: Path, change) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    change(rows)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_a_renamed_or_relabelled_concept_re_probes(world):
    run(world)
    ap, sidecar = ap_sidecar(world)
    assert "sky" in sidecar["concepts"]
    broden = world / "broden" / "broden1_224"

    def rename(rows):
        for row in rows:
            if row[1] == "sky":
                row[1] = "heavens"

    rewrite_csv(broden / "label.csv", rename)
    renamed = run(world)
    assert "concept_ap:mnv2:singular" in renamed.ran()
    ap_renamed, sidecar = ap_sidecar(world)
    assert "heavens" in sidecar["concepts"] and "sky" not in sidecar["concepts"]
    np.testing.assert_array_equal(ap_renamed, ap)

    def relabel(rows):  # every image's concepts move one image down: same images, other labels
        header, body = rows[0], rows[1:]
        first = header.index("color")
        cells = [row[first:] for row in body]
        for row, moved in zip(body, cells[1:] + cells[:1]):
            row[first:] = moved

    rewrite_csv(broden / "index.csv", relabel)
    relabelled = run(world)
    assert "concept_ap:mnv2:singular" in relabelled.ran()
    assert "extract:mnv2:broden" not in relabelled.ran()  # the images did not change
    ap_relabelled, _ = ap_sidecar(world)
    assert not np.array_equal(ap_relabelled, ap)


def test_a_concept_shown_on_every_image_is_left_out_with_a_log_line(world):
    """No balanced set can be drawn for a concept every image shows (no negatives): it is left out of the AP, and
    the log and the AP matrix's sidecar say which and why instead of dropping it silently."""
    broden = world / "broden" / "broden1_224"

    def everywhere(rows):
        column = rows[0].index("color")
        for row in rows[1:]:
            row[column] = "1"  # red-c on every image

    rewrite_csv(broden / "index.csv", everywhere)
    summary = run(world)
    _, sidecar = ap_sidecar(world)
    assert "red-c" not in sidecar["concepts"]
    assert sidecar["left_out"]["few_negatives"] == ["red-c"]
    step = next(step for step in summary.steps if step.id == "concept_ap:mnv2:singular")
    assert "; left out: " in step.message
    assert "1 absent from fewer than 4 images (no negatives to balance them): red-c" in step.message
    log = (load_study_config(world / "study.yaml").results_dir / "run.log").read_text()
    assert "(no negatives to balance them): red-c" in log


def test_a_study_warns_about_an_unmapped_folder_on_an_imagenet_head(world):
    """Also: a non-UTF-8 file name and a FIFO in the folder neither fail nor hang the study."""
    data = __import__("yaml").safe_load((world / "study.yaml").read_text())
    data["datasets"]["id"]["options"] = {}
    data["analyses"] = {"accuracy": None}
    write_config(world, data)
    Image.open(world / "photos" / "cat" / "0.png").save(os.fsencode(world / "photos" / "cat") + b"/caf\xe9.png")
    os.mkfifo(world / "photos" / "cat" / "fifo.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(world)
    assert any("class_map=" in str(w.message) for w in caught)
    log = (load_study_config(world / "study.yaml").results_dir / "run.log").read_text()
    assert "class_map=" in log
    assert "1 unlisted file(s) skipped" in log and "7 stored" in log
    store = rs.ActivationStore(load_study_config(world / "study.yaml").store_dir / "mnv2" / "photos")
    assert store.skipped == [{"path": str(world / "photos" / "cat" / "fifo.png"),
                              "reason": "not a regular file (a FIFO)"}]
    assert summary.ok
