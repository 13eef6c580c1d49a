"""Hostile files in image folders (issue 13): changed images, high-bit-depth PNGs, symbolic-link loops, unreadable
folders and files, non-UTF-8 names, FIFOs and a folder scored on an ImageNet head without a class map. Each either
works or is skipped and listed with the reason; none passes silently, crashes or hangs."""

from __future__ import annotations

import os
import signal
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustsig as rs
from robustsig.data.base import read_image
from robustsig.extraction.key import describe_dataset

from extract_helpers import tiny_classifier
from imagefiles import write_image, write_png16


def folder(root: Path, layout: dict[str, int]) -> Path:
    """Class folders of real images: ``{"cat": 2, "dog": 1}``."""
    seed = 0
    for name, count in layout.items():
        for k in range(count):
            write_image(root / name / f"{name}_{k:03d}.png", seed=seed)
            seed += 1
    return root


def relative(ds) -> list[tuple[str, int]]:
    return [(os.path.relpath(path, ds.root), label) for path, label in ds.samples]


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs past ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- 1. a changed image changes the key ----------------------------------------------------------------------
def test_an_image_rewritten_in_place_with_its_old_size_and_time_changes_the_key(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 1})
    target = root / "cat" / "cat_000.png"
    before = describe_dataset(rs.open_dataset("folder", root))
    assert describe_dataset(rs.open_dataset("folder", root)) == before  # nothing changed: the same key
    old = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # another picture of the same size, written into the same inode, its mtime put back
    with open(target, "r+b") as handle:
        handle.write(bytes(data))
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert target.stat().st_size == old.st_size and target.stat().st_mtime_ns == old.st_mtime_ns
    after = describe_dataset(rs.open_dataset("folder", root))
    assert after != before
    # replaced by another file (a new inode) with the same size and mtime: keyed by its bytes (issue 21), so the
    # same bytes give the same key and other bytes another one
    replacement = tmp_path / "other.png"
    for content, expected in ((bytes(data), after), (bytes(data[:-21]) + bytes([data[-21] ^ 0xFF]) + bytes(data[-20:]),
                                                     None)):
        replacement.write_bytes(content)
        os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(replacement, target)
        described = describe_dataset(rs.open_dataset("folder", root))
        assert described == expected if expected is not None else described not in (before, after)


def test_extract_never_reuses_a_store_of_a_changed_image(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 2})
    clf = tiny_classifier()
    first = rs.extract(clf, rs.open_dataset("folder", root), tmp_path / "store", num_workers=0, progress=False)
    h_before = first.read("h").clone()
    write_image(root / "cat" / "cat_001.png", seed=99)  # another picture under the same name
    second = rs.extract(clf, rs.open_dataset("folder", root), tmp_path / "store", num_workers=0, progress=False,
                        overwrite=True)
    fresh = rs.extract(clf, rs.open_dataset("folder", root), tmp_path / "fresh", num_workers=0, progress=False)
    assert torch.equal(second.read("h"), fresh.read("h"))
    assert not torch.equal(second.read("h")[1], h_before[1])
    assert torch.equal(second.read("h")[[0, 2, 3]], h_before[[0, 2, 3]])


# --- 4. high-bit-depth images ---------------------------------------------------------------------------------
def grey_photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).convert("L"))


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "RGB16", "RGBA16", "LA16"])
def test_high_bit_depth_images_decode_to_their_8_bit_values(tmp_path, mode):
    rng = np.random.default_rng(1)
    v8 = grey_photo()[:48, :64].astype(np.int64)
    v16 = np.clip(v8 * 257 + rng.integers(-100, 101, v8.shape), 0, 65535)  # 16-bit twin of the 8-bit photo
    if mode == "I;16":
        path = tmp_path / "grey16.png"
        Image.fromarray(v16.astype(np.uint16)).save(path)
    elif mode == "I":
        path = tmp_path / "grey32.tif"
        Image.fromarray(v16.astype(np.int32)).save(path)
    elif mode == "F":
        path = tmp_path / "float.tif"
        Image.fromarray((v16 / 65535).astype(np.float32)).save(path)
    else:
        channels = {"RGB16": 3, "RGBA16": 4, "LA16": 2}[mode]
        stacked = np.repeat(v16[..., None], channels, axis=-1)
        if channels in (2, 4):
            stacked[..., -1] = 65535
        path = write_png16(tmp_path / f"{mode}.png", stacked.astype(np.uint16))
    assert Image.open(path).mode == {"I;16": "I;16", "I": "I", "F": "F"}.get(mode, Image.open(path).mode)
    decoded = np.asarray(read_image(path)).astype(np.int64)
    assert decoded.shape == (*v8.shape, 3)
    assert np.abs(decoded - v8[..., None]).max() <= 1  # within one 8-bit step of the 8-bit twin


def test_a_16_bit_png_gives_nearly_the_activations_of_its_8_bit_twin(tmp_path):
    clf = rs.load_classifier("bundled:mobilenet_v2", device="cpu")
    v8 = grey_photo()
    rng = np.random.default_rng(2)
    v16 = np.clip(v8.astype(np.int64) * 257 + rng.integers(-128, 129, v8.shape), 0, 65535).astype(np.uint16)
    Image.fromarray(v8).save(tmp_path / "eight.png")
    Image.fromarray(v16).save(tmp_path / "sixteen.png")
    x = torch.stack([clf.preprocess(read_image(tmp_path / name)) for name in ("eight.png", "sixteen.png")])
    with torch.no_grad():
        h = clf.encode(x)
    gap = (h[0] - h[1]).norm() / h[0].norm()
    assert gap < 0.02, f"relative gap {gap:.3f} between the activations of the 8-bit and 16-bit twins"


def test_unreadable_pixel_ranges_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((4, 4), -5, dtype=np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(rs.CorruptImageError, match="negative.tif.*0..65535"):
        read_image(tmp_path / "negative.tif")
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(rs.CorruptImageError, match="nan.tif.*not finite"):
        read_image(tmp_path / "nan.tif")


# --- 5. symbolic-link loops -----------------------------------------------------------------------------------
def test_a_symlink_loop_counts_each_file_once_and_warns(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 1})
    os.symlink("..", root / "cat" / "up")        # back to the dataset root: cat/up/cat/up/...
    os.symlink(".", root / "dog" / "here")       # dog/here/here/...
    os.symlink(root / "cat", root / "dog" / "cats")  # a second way into cat (not a loop, but the same files)
    with pytest.warns(RuntimeWarning, match="symbolic link loop"):
        ds = rs.open_dataset("folder", root)
    assert relative(ds) == [("cat/cat_000.png", 0), ("cat/cat_001.png", 0), ("dog/dog_000.png", 1)]
    reasons = {os.path.relpath(item["path"], root): item["reason"] for item in ds.unlisted}
    assert set(reasons) == {"cat/up", "dog/here", "dog/cats"}
    assert "symbolic link loop" in reasons["cat/up"] and "symbolic link loop" in reasons["dog/here"]
    assert "already listed" in reasons["dog/cats"]


# --- 6. unreadable folders and files --------------------------------------------------------------------------
def test_an_unlistable_class_folder_is_listed_with_the_reason(tmp_path, monkeypatch):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 2})
    scandir = os.scandir

    def refuse_dog(path="."):
        if os.fspath(path).endswith("dog"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_dog)
    ds = rs.open_dataset("folder", root)
    monkeypatch.undo()
    assert ds.classnames == ["cat", "dog"]  # the class keeps its label number
    assert relative(ds) == [("cat/cat_000.png", 0), ("cat/cat_001.png", 0)]
    assert ds.unlisted == [{"path": str(root / "dog"), "reason": "cannot list the folder: Permission denied"}]
    store = rs.extract(tiny_classifier(), ds, tmp_path / "store", num_workers=0, progress=False)
    assert store.skipped == ds.unlisted and store.summary["skipped"] == 1


def test_an_unreadable_file_is_listed_with_the_reason(tmp_path, monkeypatch):
    root = folder(tmp_path / "set", {"cat": 2})
    locked = str(root / "cat" / "cat_001.png")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == locked
                        else access(path, mode, **kw))
    ds = rs.open_dataset("folder", root)
    monkeypatch.undo()
    assert relative(ds) == [("cat/cat_000.png", 0)]
    assert ds.unlisted == [{"path": locked, "reason": "cannot read the file: permission denied"}]


def test_chmod_000_folder_and_file(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 2})
    os.chmod(root / "cat" / "cat_001.png", 0)
    os.chmod(root / "dog", 0)
    try:
        try:
            os.listdir(root / "dog")
            open(root / "cat" / "cat_001.png", "rb").close()
        except PermissionError:
            pass
        else:
            pytest.skip("this process reads files whatever their mode (root): the monkeypatched tests cover it")
        ds = rs.open_dataset("folder", root)
    finally:
        os.chmod(root / "dog", 0o755)
        os.chmod(root / "cat" / "cat_001.png", 0o644)
    assert relative(ds) == [("cat/cat_000.png", 0)]
    assert sorted(os.path.relpath(item["path"], root) for item in ds.unlisted) == ["cat/cat_001.png", "dog"]


# --- 8. non-UTF-8 file names ----------------------------------------------------------------------------------
def test_non_utf8_file_names_are_kept_losslessly(tmp_path):
    root = folder(tmp_path / "set", {"cat": 1, "dog": 1})
    raw = os.fsencode(root / "cat") + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    write_image(Path(os.fsdecode(raw)), seed=7)
    with open(os.fsencode(root / "dog") + b"/\xff\xfe.png", "wb") as handle:
        handle.write(b"not an image")  # corrupt, so its name reaches the skipped list
    ds = rs.open_dataset("folder", root)
    assert len(ds) == 4
    assert os.fsencode(ds.samples[0][0]) == raw  # the exact bytes, through surrogate escapes
    describe_dataset(ds)  # no UnicodeEncodeError
    store = rs.extract(tiny_classifier(), ds, tmp_path / "store", num_workers=0, progress=False)
    assert store.num_rows == 3
    assert [os.fsencode(item["path"]) for item in store.skipped] == [os.fsencode(root / "dog") + b"/\xff\xfe.png"]
    assert "cannot identify image file" in store.skipped[0]["reason"]
    again = rs.ActivationStore(tmp_path / "store")  # the manifest read back holds the same name
    assert again.skipped == store.skipped


def test_extract_cli_names_a_non_utf8_file(tmp_path, capsys):
    from cli_helpers import run_cli

    root = folder(tmp_path / "set", {"cat": 1})
    with open(os.fsencode(root / "cat") + b"/bad\xe9.jpg", "wb") as handle:
        handle.write(b"not an image")
    code, out, err = run_cli(capsys, "extract", "bundled:mobilenet_v2", f"folder:{root}", "--out",
                             str(tmp_path / "store"), "--workers", "0")
    assert code == 0, err
    assert f"skipped (undecodable): {root}/cat/bad\\xe9.jpg (UnidentifiedImageError" in err


# --- 9. only regular files are opened -------------------------------------------------------------------------
def test_a_fifo_named_like_an_image_is_skipped_and_listed(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2})
    os.mkfifo(root / "cat" / "x.jpg")
    os.mkfifo(tmp_path / "flat.jpg")
    with deadline(60):
        ds = rs.open_dataset("folder", root)
        assert relative(ds) == [("cat/cat_000.png", 0), ("cat/cat_001.png", 0)]
        assert ds.unlisted == [{"path": str(root / "cat" / "x.jpg"), "reason": "not a regular file (a FIFO)"}]
        store = rs.extract(tiny_classifier(), ds, tmp_path / "store", num_workers=0, progress=False)
        assert store.num_rows == 2 and store.skipped == ds.unlisted
    assert stat.S_ISFIFO(os.stat(root / "cat" / "x.jpg").st_mode)


def test_a_fifo_listed_in_a_csv_is_named(tmp_path):
    write_image(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "set.csv").write_text("path,label\na.png,0\nb.png,1\n")
    with deadline(60), pytest.raises(rs.DataError, match=r"not regular files: .*b\.png"):
        rs.open_dataset("csv", tmp_path / "set.csv")


# --- 17. a folder scored on an ImageNet head without a class map ------------------------------------------------
def test_an_unmapped_folder_on_an_imagenet_head_warns_with_the_fix(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2, "coffee": 2})
    ds = rs.open_dataset("folder", root)
    logits = torch.randn(4, 1000)
    with pytest.warns(UserWarning, match=r"-O class_map="):
        rs.accuracy(logits, ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rs.accuracy(torch.randn(4, 2), ds)  # a head over the folder's own classes
        mapped = rs.open_dataset("folder", root, class_map={"cat": [281], "coffee": [967]})
        rs.accuracy(logits, mapped)
        for wnid in ("n01440764", "n01443537"):  # folders named by the head's own classes, in its order
            write_image(tmp_path / "wnids" / wnid / "a.png")
        rs.accuracy(torch.randn(2, 1000), rs.open_dataset("folder", tmp_path / "wnids"))


def test_an_unmapped_folder_warns_when_a_store_is_scored(tmp_path):
    from robustsig.study.analyses._streams import store_accuracy

    root = folder(tmp_path / "set", {"cat": 2, "coffee": 2})
    ds = rs.open_dataset("folder", root)
    clf = tiny_classifier(num_classes=1000)
    store = rs.extract(clf, ds, tmp_path / "store", num_workers=0, progress=False)
    with pytest.warns(UserWarning, match=r"'cat'.*class_map="):
        store_accuracy(store, ds)


@pytest.mark.parametrize("name", ["robustsig._stamps", "robustsig.data.base", "robustsig.cli._output"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
