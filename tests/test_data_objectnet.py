"""ObjectNet: the class maps (checked against wise-ft's reading of the reference maps), the 2-pixel crop, and
scoring by the argmax over the mapped ImageNet logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.data.classes import imagenet_classnames
from robustsig.data.objectnet import MAPPING_FILES, read_objectnet_mappings

from imagefiles import write_image

# A miniature ObjectNet: 3 mapped folders (one standing for two ImageNet classes) and one unmapped folder.
# imagenet_to_label_2012_v2 lists names in ObjectNet's own id order: here id i is ImageNet class 999 - i.
MINI_FOLDERS = {"alarm_clock": "Alarm clock", "banana": "Banana", "bench": "Bench", "tie": "Tie"}
MINI_MAP = {"Alarm clock": "tench; goldfish", "Banana": "great white shark", "Bench": "toilet tissue"}


def write_mini_mappings(folder):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"name {999 - i}" for i in range(1000)]
    for index, name in [(0, "tench"), (1, "goldfish"), (2, "great white shark"), (999, "toilet tissue")]:
        names[999 - index] = name
    (folder / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    (folder / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): 999 - i for i in range(1000)}))
    (folder / "folder_to_objectnet_label.json").write_text(json.dumps(MINI_FOLDERS))
    (folder / "objectnet_to_imagenet_1k.json").write_text(json.dumps(MINI_MAP))
    return folder


def mini_objectnet(root):
    write_mini_mappings(root / "objectnet-1.0" / "mappings")
    for k, folder in enumerate(["bench", "alarm_clock", "banana", "tie"]):
        write_image(root / "objectnet-1.0" / "images" / folder / f"{k}.png", seed=k, size=(20, 14))
    return root


def test_mini_objectnet_labels_and_maps(tmp_path):
    ds = rs.open_dataset("objectnet", mini_objectnet(tmp_path))
    assert ds.classnames == ["alarm clock", "banana", "bench"]  # sorted folders, lower-cased ObjectNet labels
    assert ds.class_map == [[0, 1], [2], [999]]
    assert ds.class_indices == [0, 1, 2, 999]
    assert [(path.split("/")[-2], label) for path, label in ds.samples] == [
        ("alarm_clock", 0), ("banana", 1), ("bench", 2)]  # the unmapped 'tie' folder is left out


def test_two_pixel_border_crop(tmp_path):
    ds = rs.open_dataset("objectnet", mini_objectnet(tmp_path), transform=lambda im: np.asarray(im))
    pixels, _ = ds[0]
    original = np.asarray(rs.open_dataset("folder", tmp_path / "objectnet-1.0" / "images" / "alarm_clock")[0][0])
    assert pixels.shape == (10, 16, 3)
    np.testing.assert_array_equal(pixels, original[2:-2, 2:-2])


def test_scoring_is_argmax_over_mapped_logits(tmp_path):
    ds = rs.open_dataset("objectnet", mini_objectnet(tmp_path))
    logits = torch.full((4, 1000), -5.0)
    logits[:, 500] = 100.0  # an unmapped class wins the plain argmax everywhere: ignored
    logits[0, 1] = 3.0  # label 0 (alarm clock = {0, 1}) via its second id: right
    logits[1, 999] = 3.0  # label 1 (banana = {2}) but bench wins: wrong
    logits[1, 2] = 2.0
    logits[2, 999] = 1.0  # label 2 (bench = {999}): right
    logits[3, 0] = 2.0  # label 1 again, alarm clock wins: wrong
    labels = torch.tensor([0, 1, 2, 1])
    assert rs.accuracy(logits, ds, labels=labels) == 0.5
    assert rs.top1_correct(logits, labels, class_map=ds.class_map).tolist() == [True, False, True, False]
    # logits over the 113 (here 3) classes themselves are scored directly
    own = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert rs.accuracy(own, ds, labels=labels) == 0.75


def test_missing_mapping_files(tmp_path):
    root = mini_objectnet(tmp_path)
    (root / "objectnet-1.0" / "mappings" / "objectnet_to_imagenet_1k.json").unlink()
    with pytest.raises(rs.DataError, match="no mapping files found .*pass mappings=DIR"):
        rs.open_dataset("objectnet", root)
    with pytest.raises(rs.DataError, match="missing mapping files 'objectnet_to_imagenet_1k.json'"):
        rs.open_dataset("objectnet", root, mappings=root / "objectnet-1.0" / "mappings")
    with pytest.raises(rs.DataError, match="no images/ folder"):
        rs.open_dataset("objectnet", root / "objectnet-1.0" / "mappings")


def test_clip_benchmark_layout_keeps_maps_above_objectnet_folder(tmp_path):
    root = mini_objectnet(tmp_path)
    for name in MAPPING_FILES:
        shutil.move(root / "objectnet-1.0" / "mappings" / name, root / name)
    assert rs.open_dataset("objectnet", root).class_map == [[0, 1], [2], [999]]


def wise_ft_metadata(folder):
    """mlfoundations/wise-ft src/datasets/objectnet.py get_metadata, restated for the test."""
    folder_map = {v: k for k, v in json.loads((folder / "folder_to_objectnet_label.json").read_text()).items()}
    objectnet_map = json.loads((folder / "objectnet_to_imagenet_1k.json").read_text())
    pytorch_map = {v: k for k, v in json.loads((folder / "pytorch_to_imagenet_2012_id.json").read_text()).items()}
    with open(folder / "imagenet_to_label_2012_v2") as f:
        imagenet_map = {v.strip(): str(pytorch_map[i]) for i, v in enumerate(f)}
    folder_to_ids = {}
    for objectnet_name, imagenet_names in objectnet_map.items():
        folder_to_ids[folder_map[objectnet_name]] = [int(imagenet_map[n]) for n in imagenet_names.split("; ")]
    return folder_to_ids


def test_reference_maps_read_as_wise_ft(reference_dir):
    folder = reference_dir / "wise-ft_objectnet_metadata"
    classes = read_objectnet_mappings(folder)
    expected = wise_ft_metadata(folder)
    assert classes.folders == sorted(expected) and len(classes.folders) == 113
    assert classes.imagenet_ids == [expected[f] for f in classes.folders]
    assert len({i for ids in classes.imagenet_ids for i in ids}) == 125
    named = dict(zip(classes.folders, classes.imagenet_ids))
    assert [imagenet_classnames()[i] for i in named["banana"]] == ["banana"]
    assert sorted(imagenet_classnames()[i] for i in named["alarm_clock"]) == ["analog clock", "digital clock"]


def test_reference_scoring_matches_wise_ft_projection(reference_dir, tmp_path):
    mappings = tmp_path / "objectnet-1.0" / "mappings"
    shutil.copytree(reference_dir / "wise-ft_objectnet_metadata", mappings)
    for k, folder in enumerate(["banana", "bicycle", "chair", "water_bottle"]):
        write_image(tmp_path / "objectnet-1.0" / "images" / folder / "x.png", seed=k)
    with pytest.raises(rs.DataError, match=r"109 of its 113 mapped class folders are missing: alarm_clock, .*, wok\. Scored without them"):
        rs.open_dataset("objectnet", tmp_path)
    ds = rs.open_dataset("objectnet", tmp_path, allow_missing_classes=True)
    assert len(ds.missing_classes) == 109 and "banana" not in ds.missing_classes
    assert len(ds.classnames) == 113 and len(ds.class_indices) == 125
    logits = torch.randn(500, 1000, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 113, (500,), generator=torch.Generator().manual_seed(4))
    # wise-ft: project_logits (max over each class's ids) then argmax over the 113 classes
    projected = np.zeros((500, 113))
    for k, ids in enumerate(ds.class_map):
        projected[:, k] = logits.numpy()[:, ids].max(axis=1)
    expected = (projected.argmax(axis=1) == labels.numpy()).mean()
    # the same as: argmax over the 125 mapped logits falls in the class's id set
    mapped = torch.tensor(ds.class_indices)
    best = mapped[logits[:, mapped].argmax(1)].tolist()
    in_set = np.mean([best[n] in ds.class_map[labels[n]] for n in range(500)])
    assert rs.accuracy(logits, ds, labels=labels) == pytest.approx(expected) == pytest.approx(in_set)
