"""``class_map=`` on the folder and csv kinds: your own classes scored on an ImageNet-1k head as ObjectNet is, and
every malformed map refused with the file named."""

from __future__ import annotations

import json

import pytest
import torch

import robustsig as rs
from robustsig.data.scoring import pruning_scoring, scoring_rule

from imagefiles import write_image

MAP = {"dog": [207, 208], "cat": [281, 285, 282]}


@pytest.fixture
def folder(tmp_path):
    for k, name in enumerate(["dog/a.jpg", "cat/b.jpg", "dog/c.jpg"]):
        write_image(tmp_path / "set" / name, seed=k)
    return tmp_path / "set"


def write_map(path, data):
    path.write_text(json.dumps(data))
    return path


def logits_with(*hot):
    """One row per (index, value) list: 1000 ImageNet logits, zero except the given ones."""
    rows = torch.zeros(len(hot), 1000)
    for row, pairs in enumerate(hot):
        for index, value in pairs:
            rows[row, index] = value
    return rows


def test_folder_class_map_scores_like_objectnet(folder, tmp_path):
    ds = rs.open_dataset("folder", folder, class_map=write_map(tmp_path / "map.json", MAP))
    assert ds.classnames == ["cat", "dog"] and ds.targets == [0, 1, 1]
    assert ds.class_map == [[281, 285, 282], [207, 208]]  # classname order, the map's own order inside a class
    assert ds.class_indices == [207, 208, 281, 282, 285]
    assert scoring_rule(ds)["class_map"] == ds.class_map and pruning_scoring(ds)["class_map"] == ds.class_map
    # row 0: a cat image whose best mapped logit is 285 (a cat id), while the unmapped logit 0 is larger still;
    # row 1: a dog image called 208 (a dog id); row 2: a dog image called 282 (a cat id)
    logits = logits_with([(0, 9.0), (285, 5.0), (207, 1.0)], [(208, 2.0)], [(207, 1.0), (282, 3.0)])
    assert rs.accuracy(logits, ds) == pytest.approx(2 / 3)
    # the same map given as a mapping
    assert rs.open_dataset("folder", folder, class_map=MAP).class_map == ds.class_map


def test_csv_class_map(tmp_path):
    for k in range(3):
        write_image(tmp_path / "img" / f"{k}.jpg", seed=k)
    (tmp_path / "set.csv").write_text("path,label\nimg/0.jpg,dog\nimg/1.jpg,cat\nimg/2.jpg,\n")
    ds = rs.open_dataset("csv", tmp_path / "set.csv", class_map=write_map(tmp_path / "map.json", MAP))
    assert ds.targets == [1, 0, -1] and ds.class_map == [[281, 285, 282], [207, 208]]
    assert rs.accuracy(logits_with([(207, 1.0)], [(281, 1.0)]), ds, labels=torch.tensor([1, 0])) == 1.0
    (tmp_path / "concepts.csv").write_text("path,concepts\nimg/0.jpg,sky\n")
    with pytest.raises(rs.DataError, match="concepts.csv: a class_map applies to a 'path,label' file"):
        rs.open_dataset("csv", tmp_path / "concepts.csv", class_map=tmp_path / "map.json")


@pytest.mark.parametrize("data, message", [
    ({**MAP, "cow": [345]}, r"'cow' not among the dataset's classes \('cat', 'dog'\)"),
    ({"dog": [207]}, r"no entry for the classes 'cat'"),
    ({**MAP, "cat": []}, r"class 'cat' maps to \[\]; expected a non-empty list"),
    ({**MAP, "cat": 281}, r"class 'cat' maps to 281; expected a non-empty list"),
    ({**MAP, "cat": [281, 1000]}, r"class 'cat' lists 1000; expected ImageNet-1k indices, integers 0..999"),
    ({**MAP, "cat": [-1]}, r"class 'cat' lists -1;"),
    ({**MAP, "cat": [281.0, "282", True]}, r"class 'cat' lists 281.0, \"282\", true;"),
    ({**MAP, "cat": [281, 281]}, r"class 'cat' lists an index twice"),
    ({**MAP, "cat": [281, 208]}, r"index 208 is listed for both 'cat' and 'dog'"),
    ([[281], [207]], r"found a JSON list; expected a JSON object"),
])
def test_bad_class_maps_name_the_file(folder, tmp_path, data, message):
    path = write_map(tmp_path / "bad-map.json", data)
    with pytest.raises(rs.DataError, match=r"class map .*bad-map\.json: " + message):
        rs.open_dataset("folder", folder, class_map=path)


def test_unreadable_class_maps(folder, tmp_path):
    with pytest.raises(rs.DataError, match=r"class map .*absent\.json: no such file"):
        rs.open_dataset("folder", folder, class_map=tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text('{"cat": [281,')
    with pytest.raises(rs.DataError, match=r"class map .*broken\.json: cannot read it as JSON"):
        rs.open_dataset("folder", folder, class_map=tmp_path / "broken.json")
    with pytest.raises(rs.DataError, match=r"a class_map was given for a flat folder"):
        rs.open_dataset("folder", folder / "cat", class_map=MAP)
