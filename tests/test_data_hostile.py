"""Hostile files in image folders (issue 13): changed images, high-bit-depth PNGs, symbolic-link loops, unreadable
folders and files, non-UTF-8 names, FIFOs and a folder scored on an ImageNet head without a class map; and from
issue 21's campaign: empty class folders, an image linked into two classes, a FIFO as class map, a decompression
bomb. Each either works or is skipped and listed with the reason; none passes silently, crashes or hangs."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustsig as rs
from robustsig.data.base import read_image
from robustsig.extraction.key import describe_dataset

from extract_helpers import tiny_classifier
from hang_guard import deadline
from imagefiles import write_image, write_png16, write_png_bomb


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
    from robustsig.study.streams import store_accuracy

    root = folder(tmp_path / "set", {"cat": 2, "coffee": 2})
    ds = rs.open_dataset("folder", root)
    clf = tiny_classifier(num_classes=1000)
    store = rs.extract(clf, ds, tmp_path / "store", num_workers=0, progress=False)
    with pytest.warns(UserWarning, match=r"'cat'.*class_map="):
        store_accuracy(store, ds)


# --- issue 21: an empty class folder is a missing class -------------------------------------------------------
def test_imagenet_r_with_150_of_200_folders_empty_is_refused(tmp_path):
    from robustsig.data.classes import subset_wnids

    wnids = subset_wnids("imagenet-r")
    root = tmp_path / "imagenet-r"
    for k, wnid in enumerate(wnids):
        if k < 50:
            write_image(root / wnid / "a.jpg", seed=k, size=(8, 8))
        else:
            (root / wnid).mkdir(parents=True)
    with pytest.raises(rs.DataError, match=rf"150 of its 200 class folders \(wnids\) are missing: {wnids[50]}, .* "
                                           r"150 of them are folders without any image"):
        rs.open_dataset("imagenet-r", root)
    ds = rs.open_dataset("imagenet-r", root, allow_missing_classes=True)
    assert ds.missing_classes == list(wnids[50:]) and len(ds.class_indices) == 50


def test_imagenet_v2_with_999_of_1000_folders_empty_is_refused(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for n in range(1000):
        (root / str(n)).mkdir(parents=True)
    write_image(root / "3" / "a.jpeg", seed=3, size=(8, 8))
    with pytest.raises(rs.DataError, match=r"999 of its 1000 class folders \(0\.\.999\) are missing: 0, 1, 2, 4, "):
        rs.open_dataset("imagenet-v2", root)
    assert len(rs.open_dataset("imagenet-v2", root, allow_missing_classes=True).missing_classes) == 999


@pytest.mark.parametrize("kind", ["imagenet", "imagenet-sketch"])
def test_imagenet_and_sketch_with_3_of_1000_folders_are_refused(tmp_path, kind):
    from robustsig.data.classes import imagenet_wnids

    wnids = imagenet_wnids()
    for k in (0, 417, 999):
        write_image(tmp_path / "set" / wnids[k] / "a.JPEG", seed=k, size=(8, 8))
    (tmp_path / "set" / wnids[5]).mkdir()  # present but empty: missing too
    with pytest.raises(rs.DataError, match=rf"^{kind}: .*997 of its 1000 class folders \(wnids\) are missing: "
                                           rf"{wnids[1]}, .* 1 of them are folders without any image \({wnids[5]}\)"):
        rs.open_dataset(kind, tmp_path / "set")
    ds = rs.open_dataset(kind, tmp_path / "set", allow_missing_classes=True)
    assert len(ds.missing_classes) == 997 and wnids[5] in ds.missing_classes and ds.class_indices == list(range(1000))


def test_objectnet_with_an_empty_mapped_folder_is_refused(tmp_path, reference_dir):
    import shutil

    from robustsig.data.objectnet import read_objectnet_mappings

    mappings = tmp_path / "objectnet-1.0" / "mappings"
    shutil.copytree(reference_dir / "wise-ft_objectnet_metadata", mappings)
    folders = read_objectnet_mappings(mappings).folders
    for k, name in enumerate(folders):
        if name == "banana":
            (tmp_path / "objectnet-1.0" / "images" / name).mkdir(parents=True)
        else:
            write_image(tmp_path / "objectnet-1.0" / "images" / name / "x.png", seed=k % 7, size=(8, 8))
    with pytest.raises(rs.DataError, match=r"1 of its 113 mapped class folders are missing: banana\. 1 of them"):
        rs.open_dataset("objectnet", tmp_path)
    assert rs.open_dataset("objectnet", tmp_path, allow_missing_classes=True).missing_classes == ["banana"]


# --- issue 21: an image linked into two class folders -----------------------------------------------------------
@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_image_linked_into_two_classes_is_kept_once_with_a_warning(tmp_path, link):
    root = folder(tmp_path / "set", {"cat": 2, "dog": 1})
    (os.link if link == "hard" else os.symlink)(root / "cat" / "cat_000.png", root / "dog" / "also_a_dog.png")
    os.symlink(root / "cat" / "cat_001.png", root / "cat" / "zz_again.png")  # within one class: counted once, quietly
    with pytest.warns(RuntimeWarning, match=r"dog/also_a_dog\.png: the same file as .*cat/cat_000\.png \(a link\), "
                                            r"listed in the class folder 'cat'.*not in 'dog'") as caught:
        ds = rs.open_dataset("folder", root)
    assert len(caught) == 1  # the link within a class is not a warning
    assert relative(ds) == [("cat/cat_000.png", 0), ("cat/cat_001.png", 0), ("dog/dog_000.png", 1)]
    reasons = {os.path.relpath(item["path"], root): item["reason"] for item in ds.unlisted}
    assert set(reasons) == {"dog/also_a_dog.png", "cat/zz_again.png"}


# --- issue 21: a FIFO as class map ------------------------------------------------------------------------------
def test_a_fifo_given_as_class_map_is_refused_not_waited_on(tmp_path, capsys):
    from cli_helpers import run_cli

    root = folder(tmp_path / "set", {"cat": 1, "dog": 1})
    os.mkfifo(tmp_path / "map.json")
    with deadline(30), pytest.raises(rs.DataError, match=r"map\.json is a FIFO, not a regular file; expected a class "
                                                         "map file"):
        rs.open_dataset("folder", root, class_map=str(tmp_path / "map.json"))
    with deadline(60):
        code, _, err = run_cli(capsys, "extract", "timm:test_resnet", f"folder:{root}", "-O",
                               f"class_map={tmp_path / 'map.json'}", "--out", str(tmp_path / "store"), "--workers", "0")
    assert code == 2 and "is a FIFO" in err and "Traceback" not in err


# --- issue 21: a decompression bomb -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """Two small images and a 13000 x 13000 PNG of 170 kB (169 million pixels, under Pillow's own refusal)."""
    root = folder(tmp_path_factory.mktemp("bomb") / "set", {"cat": 2})
    write_png_bomb(root / "cat" / "zz_bomb.png", 13000, 13000)
    return root


def test_an_image_over_the_pixel_limit_is_skipped_and_listed(tmp_path, bomb):
    from robustsig.data.base import MAX_PIXELS

    ds = rs.open_dataset("folder", bomb)
    image, label, reason = ds.fetch(2)
    assert image is None and label == 0
    assert reason == (f"13000 x 13000 = 169,000,000 pixels, more than the limit of {MAX_PIXELS:,} (a decompression "
                      "bomb, or a photo far larger than any model's input); raise the dataset option max_pixels to "
                      "read it")
    with pytest.raises(rs.CorruptImageError, match=r"zz_bomb\.png.*more than the limit"):
        rs.open_dataset("folder", bomb, strict=True)[2]
    store = rs.extract(tiny_classifier(), ds, tmp_path / "store", num_workers=0, progress=False)
    assert store.num_rows == 2 and [item["reason"] for item in store.skipped] == [reason]


def test_max_pixels_is_a_dataset_option_and_part_of_the_key(tmp_path):
    root = folder(tmp_path / "set", {"cat": 2})  # 40 x 32 = 1280 pixels each
    small = rs.open_dataset("folder", root, max_pixels=1000)
    assert small[0] == (None, 0)
    assert rs.open_dataset("folder", root, max_pixels=1280)[0][0].size == (40, 32)
    assert describe_dataset(small) != describe_dataset(rs.open_dataset("folder", root))
    assert "max_pixels" not in describe_dataset(rs.open_dataset("folder", root))  # the default keeps old keys
    with pytest.raises(rs.InputError, match="max_pixels must be a positive whole number"):
        rs.open_dataset("folder", root, max_pixels=0)


@pytest.mark.parametrize("name", ["robustsig._stamps", "robustsig.data.base", "robustsig.cli._output"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
