"""Hostile model files and ``robustsig lowrank`` (issue 21, the campaign of 2026-12-07): a Hugging Face folder that
ships its own code, a pickled ``pytorch_model.bin``, low-rank metadata with absurd ranks, head weights retyped as
integers, and ``lowrank`` with fraction 1, a full disk, a folder, a read-only place or an existing file as --save."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.extraction.calibrate import calibrate_linear_maps
from robustsig.models.linear_maps import FactorisedMap
from robustsig.models.lowrank import low_rank_classifier

from cli_helpers import run_cli
from extract_helpers import image_folder

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*randomly initialised")]


# --- Hugging Face folders: data only -------------------------------------------------------------------------
def tiny_hf_vit(folder: Path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_an_hf_folder_with_its_own_code_is_refused_and_its_code_never_runs(tmp_path, monkeypatch):
    folder = tmp_path / "evil"
    tiny_hf_vit(folder)
    marker = tmp_path / "the folder's code ran"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evilvit", auto_map={"AutoConfig": "evil.EvilConfig",
                                                  "AutoModelForImageClassification": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import ViTConfig, ViTForImageClassification\n"
        "class EvilConfig(ViTConfig):\n    model_type = 'evilvit'\n"
        "class EvilModel(ViTForImageClassification):\n    config_class = EvilConfig\n")
    monkeypatch.setattr("builtins.input", lambda *args, **kwargs: "y")  # the user answers "y" to the prompt
    with pytest.raises(rs.UnsafeCheckpointError, match=r"config\.json has an auto_map .*evil\.EvilModel.*never "
                                                       "running their code"):
        rs.load_classifier(f"hf:{folder}", device="cpu")
    assert not marker.exists()


def test_every_transformers_call_passes_trust_remote_code_false(tmp_path, monkeypatch):
    import transformers

    tiny_hf_vit(tmp_path / "vit")
    calls = []
    for name in ("AutoModelForImageClassification", "AutoImageProcessor"):
        cls = getattr(transformers, name)
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            calls.append(kwargs.get("trust_remote_code", "not passed"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    rs.load_classifier(f"hf:{tmp_path / 'vit'}", device="cpu")
    assert calls == [False, False]


def test_a_pickled_hf_bin_needing_more_than_tensors_says_how_to_convert_it(tmp_path, capsys):
    import numpy as np

    folder = tmp_path / "bin"
    model = tiny_hf_vit(folder)
    os.remove(folder / "model.safetensors")
    torch.save({**model.state_dict(), "extra": np.ones(3)}, folder / "pytorch_model.bin")
    with pytest.raises(rs.UnsafeCheckpointError, match=r"pytorch_model\.bin is a pickle .*safetensors.*"
                                                       r"model\.safetensors"):
        rs.load_classifier(f"hf:{folder}", device="cpu")
    image_folder(tmp_path / "images", 2)
    code, _, err = run_cli(capsys, "extract", f"hf:{folder}", f"folder:{tmp_path / 'images'}", "--out",
                           str(tmp_path / "store"), "--workers", "0")
    assert code == 2 and "Traceback" not in err and "UnpicklingError" not in err
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])  # a damaged file is named, not a traceback
    with pytest.raises(rs.InputError, match=rf"cannot load Hugging Face model '{folder}'"):
        rs.load_classifier(f"hf:{folder}", device="cpu")


# --- low-rank metadata and retyped weights -------------------------------------------------------------------
@pytest.fixture(scope="module")
def low_rank_file(tmp_path_factory) -> tuple[Path, dict]:
    """A saved low-rank timm:test_resnet (factorised maps) and its robustsig metadata."""
    root = tmp_path_factory.mktemp("lowrank")
    classifier = rs.load_classifier("timm:test_resnet", device="cpu")
    calibration = calibrate_linear_maps(classifier, image_folder(root / "images", 4), images=4, batch_size=4,
                                        progress=False)
    low = low_rank_classifier(classifier, calibration, 0.5, "singular", dense=False)
    path = rs.save_classifier(low, root / "low.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["robustsig"])
    assert meta["meta"]["lowrank"]["factorised"]
    return path, meta


def rewrite_metadata(source: Path, target: Path, meta: dict) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        header = dict(handle.metadata())
    save_file(tensors, str(target), metadata={**header, "robustsig": json.dumps(meta)})
    return target


@pytest.mark.parametrize("rank", [10 ** 12, 3_000_000, -5, 0, 2.5, True, "4", "the file's rank + 1"])
def test_absurd_low_rank_metadata_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, low_rank_file,
                                                                        rank):
    source, meta = low_rank_file
    factorised = meta["meta"]["lowrank"]["factorised"]
    path_of_map, saved = next(iter(factorised.items()))
    hostile = json.loads(json.dumps(meta))
    hostile["meta"]["lowrank"]["factorised"][path_of_map] = saved + 1 if rank == "the file's rank + 1" else rank
    target = rewrite_metadata(source, tmp_path / "hostile.safetensors", hostile)
    like = FactorisedMap.like.__func__

    def guarded(cls, linear_map, rank):
        assert isinstance(rank, int) and 1 <= rank <= linear_map.shape.rank, f"allocating a rank of {rank!r}"
        return like(cls, linear_map, rank)

    monkeypatch.setattr(FactorisedMap, "like", classmethod(guarded))
    with pytest.raises(rs.InputError, match=rf"{path_of_map!r}.* rank"):
        rs.load_classifier(f"timm:test_resnet@{target}", device="cpu")
    # the file as saved loads
    assert rs.load_classifier(f"timm:test_resnet@{source}", device="cpu").meta["lowrank"]["factorised"] == factorised


def retype(path: Path, key: str, dtype: str) -> None:
    """Rewrite the dtype of ``key`` in a safetensors header in place (a dtype of the same width keeps the bytes)."""
    data = bytearray(path.read_bytes())
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header[key]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= size
    data[8:8 + size] = text.ljust(size, b" ")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("dtype", ["I32", "U8"])
def test_head_weights_retyped_as_integers_are_refused(tmp_path, dtype):
    classifier = rs.load_classifier("timm:test_resnet", device="cpu")
    path = rs.save_classifier(classifier, tmp_path / "model.safetensors")
    if dtype == "U8":  # a narrower type: the byte count changes with the shape, so retype a 4-times-wider view
        from safetensors.torch import load_file, save_file

        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            header = handle.metadata()
        state["head.weight"] = state["head.weight"].view(torch.uint8)
        save_file(state, str(path), metadata=header)
    else:
        retype(path, "head.weight", dtype)
    with pytest.raises(rs.InputError, match=r"stored as non-floating-point numbers, first 'head\.weight' as "
                                            r"(int32|uint8)"):
        rs.load_classifier(f"timm:test_resnet@{path}", device="cpu")


# --- robustsig lowrank -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    image_folder(root, 6)
    return root


def lowrank(capsys, photos: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "lowrank", "timm:test_resnet", f"folder:{photos}", "--calibration", "2", "--batch-size",
                   "3", *extra)


def never_calibrate(*args, **kwargs):
    raise AssertionError("the work started although --save cannot be written")


@pytest.mark.parametrize("option", [("--fractions", "0,1.0"), ("--fractions", "1.5"), ("--save-fraction", "1.0")])
def test_lowrank_refuses_a_fraction_of_one_before_the_work(tmp_path, capsys, monkeypatch, photos, option):
    monkeypatch.setattr("robustsig.extraction.calibrate.calibrate_linear_maps", never_calibrate)
    save = tmp_path / "low.safetensors"
    code, _, err = lowrank(capsys, photos, *option, "--save", str(save))
    assert code == 2 and "Traceback" not in err
    assert f"{option[0]} must be fractions removed in [0, 1)" in err
    assert not save.exists()


def test_a_budget_that_empties_a_map_is_refused(photos):
    classifier = rs.load_classifier("timm:test_resnet", device="cpu")
    calibration = calibrate_linear_maps(classifier, rs.open_dataset("folder", photos), images=2, batch_size=2,
                                        progress=False)
    with pytest.raises(rs.InputError, match=r"fraction 1 \(rank budget\) removes every direction of \d+ linear"):
        low_rank_classifier(classifier, calibration, 1.0)
    with pytest.raises(rs.InputError, match=r"removes every direction of \d+ linear map\(s\), first"):
        low_rank_classifier(classifier, calibration, 0.9999, budget="parameters")


@pytest.mark.parametrize("where", ["folder", "read-only", "existing"])
def test_lowrank_checks_save_before_the_work(tmp_path, capsys, monkeypatch, photos, where):
    monkeypatch.setattr("robustsig.extraction.calibrate.calibrate_linear_maps", never_calibrate)
    save = tmp_path / "low.safetensors"
    if where == "folder":
        save.mkdir()
        expected = "is a folder"
    elif where == "existing":
        save.write_bytes(b"the user's model")
        expected = "exists; pass --overwrite to replace it"
    else:
        def read_only(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr("robustsig._atomic._create_temporary", read_only)
        expected = f"{tmp_path}: Read-only file system"
    code, _, err = lowrank(capsys, photos, "--fractions", "0.5", "--save", str(save))
    assert code in (1, 2) and "Traceback" not in err and "AssertionError" not in err
    assert expected in err
    if where == "existing":
        assert save.read_bytes() == b"the user's model"


def test_lowrank_overwrite_replaces_an_existing_file(tmp_path, capsys, photos):
    save = tmp_path / "low.safetensors"
    save.write_bytes(b"old")
    code, _, err = lowrank(capsys, photos, "--fractions", "0.5", "--save", str(save), "--overwrite")
    assert code == 0, err
    assert rs.load_classifier(f"timm:test_resnet@{save}", device="cpu").meta["lowrank"]["fraction"] == 0.5


def test_lowrank_save_onto_a_full_disk_says_so(tmp_path, photos):
    """A real failed write: the file-size limit (RLIMIT_FSIZE) makes the write of the model fail with EFBIG in
    whichever writer (safetensors' own raised a SafetensorError traceback)."""
    save = tmp_path / "low.safetensors"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "robustsig", "lowrank", "timm:test_resnet", f"folder:{photos}",
                           "--calibration", "2", "--batch-size", "3", "--fractions", "0.5", "--save", str(save)],
                          capture_output=True, text=True, env=env, preexec_fn=small_disk, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "SafetensorError" not in done.stderr
    assert f"{save}: File too large" in done.stderr
    assert not save.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
