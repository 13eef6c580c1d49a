"""`robustsig extract SPEC KIND:ROOT --out DIR`, with the model factory and dataset registry stood in by test
doubles (the real ones live in other modules; here only the command's own wiring is under test)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import typer
from typer.testing import CliRunner

import robustsig as rs
from robustsig.cli.extract import register

from extract_helpers import image_folder, tiny_classifier


@pytest.fixture
def app():
    """A command group holding `extract` (the shared app is a group once every command is registered)."""
    group = typer.Typer()
    group.callback()(lambda: None)
    register(group)
    return group


@pytest.fixture
def factories(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", 7, corrupt=(2,))
    opened = []

    def load_classifier(spec):
        if spec != "test:tiny":
            raise rs.InputError(f"unknown model spec {spec!r}")
        return tiny_classifier()

    def open_dataset(kind, root, **options):
        opened.append((kind, root))
        return folder

    monkeypatch.setitem(sys.modules, "robustsig.models.factory", types.SimpleNamespace(load_classifier=load_classifier))
    monkeypatch.setitem(sys.modules, "robustsig.data.registry", types.SimpleNamespace(open_dataset=open_dataset))
    return opened


def test_extract_command_writes_a_store(tmp_path, factories, app):
    out = tmp_path / "store"
    result = CliRunner().invoke(app, ["extract", "test:tiny", f"folder:{tmp_path / 'images'}", "--out", str(out),
                                      "--layers", "conv1,conv2", "--batch-size", "3", "--workers", "0",
                                      "--topk", "2", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert factories == [("folder", str(tmp_path / "images"))]
    assert document["rows"] == 6 and document["summary"]["skipped"] == 1
    assert set(document["keys"]) >= {"h", "topk_values", "topk_indices", "conv1", "conv2"}
    store = rs.ActivationStore(out)
    assert store.manifest["key"]["logits_topk"] == 2 and store.layers == ["conv1", "conv2"]
    table = CliRunner().invoke(app, ["extract", "test:tiny", f"folder:{tmp_path / 'images'}", "--out", str(out),
                                     "--layers", "conv1,conv2", "--topk", "2"])
    assert table.exit_code == 0 and "images/s" in table.stdout and str(out.resolve()) in table.stdout


def test_extract_command_errors_name_the_input(tmp_path, factories, app):
    for argv, message in [(["extract", "test:tiny", "photos", "--out", str(tmp_path / "s")], "must be KIND:ROOT"),
                          (["extract", "nope:x", "folder:x", "--out", str(tmp_path / "s")], "unknown model spec"),
                          (["extract", "test:tiny", "folder:x", "--out", str(tmp_path / "s"), "--dtype", "int8"],
                           "dtype must be one of")]:
        result = CliRunner().invoke(app, argv)
        assert isinstance(result.exception, rs.InputError) and message in str(result.exception)
