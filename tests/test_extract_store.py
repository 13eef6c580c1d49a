"""rs.extract into an ActivationStore: stored values, memory-mapped reads, the key rules, corrupt images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.extraction.store import ActivationStore, safetensors_header

from extract_helpers import Tensorize, image_folder, reopen_folder, tiny_classifier


def run(clf, ds, out, **options):
    options = {"batch_size": 3, "shard_size": 4, "num_workers": 0, "progress": False} | options
    return rs.extract(clf, ds, out, **options)


def direct_outputs(clf, ds, ids):
    """h, logits and conv1 mean-pooled, computed sample by sample without extract."""
    x = torch.stack([clf.preprocess(ds[i][0]) for i in ids])
    with torch.inference_mode():
        h = clf.encode(x)
        return h, clf.head(h), clf.encoder.conv1(x).mean(dim=(2, 3))


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "images", 14, corrupt=(5, 11))


def count_forwards(clf):
    calls = []
    clf.encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


def test_store_holds_what_the_model_computes(folder, tmp_path):
    clf = tiny_classifier()
    store = run(clf, folder, tmp_path / "store", layers=["conv1"])
    ids = [i for i in range(14) if i not in (5, 11)]
    assert store.read("ids").tolist() == ids
    assert store.read("labels").tolist() == [i % 5 for i in ids]
    h, logits, conv1 = direct_outputs(clf, folder, ids)
    torch.testing.assert_close(store.read("h"), h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store.read("logits"), logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store.read("conv1"), conv1, rtol=1e-5, atol=1e-6)
    # the head is stored with the activations, so analyses need not reload the model
    assert torch.equal(store.read("W"), clf.W.detach()) and torch.equal(store.read("b"), clf.b.detach())
    assert len(store) == 12 and store.num_rows == 12
    assert store.manifest["tensors"]["h"] == {"dtype": "float32", "shape": [12, 8]}
    assert store.manifest["num_samples"] == 14 and store.manifest["rows"] == 12
    summary = store.summary
    assert (summary["images"], summary["skipped"], summary["computed"]) == (12, 2, 12)
    assert summary["store"] == str((tmp_path / "store").resolve()) and summary["seconds"] > 0


def test_worker_processes_give_the_same_store(folder, tmp_path):
    clf = tiny_classifier()
    reference = run(clf, folder, tmp_path / "reference", layers=["conv1"])
    store = run(clf, folder, tmp_path / "store", layers=["conv1"], num_workers=2)
    for key in reference.keys:
        assert torch.equal(store.read(key), reference.read(key)), key
    assert store.skipped == reference.skipped


def test_corrupt_images_are_counted_and_listed(folder, tmp_path):
    store = run(tiny_classifier(), folder, tmp_path / "store")
    assert store.manifest["num_skipped"] == 2
    assert [{k: v for k, v in item.items() if k != "reason"} for item in store.skipped] == [
        {"id": 5, "path": folder.samples[5][0]}, {"id": 11, "path": folder.samples[11][0]}]
    assert all("image file is truncated" in item["reason"] for item in store.skipped)
    assert 5 not in store.read("ids").tolist()


def test_reads_are_memory_mapped_and_slices_span_shards(folder, tmp_path):
    store = run(tiny_classifier(), folder, tmp_path / "store", shard_size=5)
    full = store.read("h")  # 3 shards: a concatenation
    assert [s["rows"] for s in store.manifest["shards"]] == [5, 4, 3]
    one_shard = store.read("h", slice(0, 3))
    torch.testing.assert_close(one_shard, full[:3], rtol=0, atol=0)
    torch.testing.assert_close(store.read("h", slice(2, 11)), full[2:11], rtol=0, atol=0)
    assert store.read("h", slice(12, 20)).shape == (0, 8)
    # a one-shard read is a view of the file's pages, not a copy
    first = store.manifest["shards"][0]["file"]
    maps = Path("/proc/self/maps")
    if maps.exists():
        address = one_shard.data_ptr()
        mapped = [line for line in maps.read_text().splitlines()
                  if line.endswith(first)
                  and int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)]
        assert mapped, "the tensor does not lie in a mapping of the shard file"
    # writing to a read tensor never reaches the file (copy-on-write)
    before = (tmp_path / "store" / first).read_bytes()
    one_shard += 1
    assert (tmp_path / "store" / first).read_bytes() == before
    assert not torch.equal(ActivationStore(tmp_path / "store").read("h", slice(0, 3)), one_shard)


def test_batches_stream_every_row_in_order(folder, tmp_path):
    store = run(tiny_classifier(), folder, tmp_path / "store", layers="all")
    batches = list(store.batches(["h", "ids", "conv2"], batch_size=5))
    assert [len(b["ids"]) for b in batches] == [5, 5, 2]
    for key in ("h", "ids", "conv2"):
        torch.testing.assert_close(torch.cat([b[key] for b in batches]), store.read(key), rtol=0, atol=0)
    assert set(next(store.batches(batch_size=2))) == {"h", "logits", "labels", "ids", "conv1", "conv2"}
    with pytest.raises(rs.InputError, match="unknown key 'nope'"):
        next(store.batches(["nope"]))


def test_layers_all_are_pooled_per_sample(folder, tmp_path):
    clf = tiny_classifier()
    store = run(clf, folder, tmp_path / "store", layers="all", pooling="mean")
    assert store.layers == ["conv1", "conv2"]
    ids = store.read("ids").tolist()
    x = torch.stack([clf.preprocess(folder[i][0]) for i in ids])
    with torch.inference_mode():
        conv2 = clf.encoder.conv2(torch.relu(clf.encoder.conv1(x)))
    torch.testing.assert_close(store.read("conv2"), conv2.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(rs.InputError, match="not token sequences"):
        run(clf, folder, tmp_path / "other", layers=["conv1"], pooling="cls")
    with pytest.raises(rs.InputError, match="unknown layer"):
        run(clf, folder, tmp_path / "other", layers=["conv9"])


def test_topk_logits(folder, tmp_path):
    clf = tiny_classifier()
    full = run(clf, folder, tmp_path / "full")
    top = run(clf, folder, tmp_path / "top", logits_topk=2)
    values, indices = full.read("logits").topk(2, dim=1)
    torch.testing.assert_close(top.read("topk_values"), values, rtol=0, atol=0)
    assert torch.equal(top.read("topk_indices"), indices)
    with pytest.raises(rs.InputError, match="top-2 logits"):
        top.read("logits")
    with pytest.raises(rs.InputError, match="logits_topk"):
        run(clf, folder, tmp_path / "bad", logits_topk=6)


@pytest.mark.parametrize("dtype", ["float16", torch.bfloat16])
def test_half_precision_storage(folder, tmp_path, dtype):
    clf = tiny_classifier()
    full = run(clf, folder, tmp_path / "full")
    half = run(clf, folder, tmp_path / "half", dtype=dtype)
    target = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert half.read("h").dtype == target and half.read("labels").dtype == torch.int64
    assert torch.equal(half.read("h"), full.read("h").to(target))


def test_compute_options(folder, tmp_path):
    clf = tiny_classifier()
    full = run(clf, folder, tmp_path / "full")
    fast = run(clf, folder, tmp_path / "fast", autocast="bf16", channels_last=True)
    assert fast.manifest["key"]["autocast"] == "bf16" and fast.manifest["run"]["channels_last"] is True
    assert fast.read("h").dtype == torch.float32
    torch.testing.assert_close(fast.read("h"), full.read("h"), rtol=0.05, atol=0.02)  # bf16 keeps ~3 digits
    assert not torch.equal(fast.read("h"), full.read("h"))


def test_same_key_reuses_without_recompute(folder, tmp_path):
    clf = tiny_classifier()
    first = run(clf, folder, tmp_path / "store", layers=["conv1"])
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").iterdir()}
    # another classifier object with the same weights, the folder listed again, other batch size and pooling
    again = tiny_classifier()
    calls = count_forwards(again)
    second = run(again, reopen_folder(tmp_path / "images"), tmp_path / "store",
                 layers=["conv1"], batch_size=7)
    assert calls == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").iterdir()} == stamps
    assert torch.equal(second.read("h"), first.read("h"))


@pytest.mark.parametrize("change, field", [
    ("weights", "model.fingerprint"),
    ("layers", "layers"),
    ("dtype", "dtype"),
    ("topk", "logits_topk"),
    ("preprocess", "preprocess"),
])
def test_changed_input_is_never_reused(folder, tmp_path, change, field):
    clf = tiny_classifier()
    run(clf, folder, tmp_path / "store", layers=["conv1"])
    options = {"layers": ["conv1"]}
    ds = folder
    if change == "weights":
        with torch.no_grad():
            clf.head.weight[0, 0] += 1e-3
    elif change == "layers":
        options["layers"] = ["conv1", "conv2"]
    elif change == "dtype":
        options["dtype"] = "float16"
    elif change == "topk":
        options["logits_topk"] = 3
    elif change == "preprocess":
        clf.preprocess = Tensorize(12)
    calls = count_forwards(clf)
    with pytest.raises(rs.InputError, match=f"another input.*{field}") as error:
        run(clf, ds, tmp_path / "store", **options)
    assert "overwrite=True" in str(error.value) and calls == []
    store = run(clf, ds, tmp_path / "store", overwrite=True, **options)
    assert calls, "overwrite recomputes"
    fresh = run(clf, ds, tmp_path / "fresh", **options)
    for key in store.keys:
        assert torch.equal(store.read(key), fresh.read(key))


def test_pooling_is_not_part_of_a_layerless_key(folder, tmp_path):
    clf = tiny_classifier()
    run(clf, folder, tmp_path / "store")
    calls = count_forwards(clf)
    run(clf, folder, tmp_path / "store", pooling="mean")
    assert calls == []


def test_out_dir_rules(folder, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(rs.InputError, match="not empty and holds no activation store"):
        run(tiny_classifier(), folder, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(rs.DataError, match="no activation store"):
        ActivationStore(tmp_path / "busy")


def test_arguments_are_checked_before_any_work(folder, tmp_path):
    clf = tiny_classifier()
    for options, message in [({"dtype": "int8"}, "dtype must be one of"), ({"autocast": "fp8"}, "autocast"),
                             ({"batch_size": 0}, "batch_size"), ({"pooling": "max"}, "pooling"),
                             ({"num_workers": -1}, "num_workers"), ({"shard_size": 2.5}, "shard_size"),
                             ({"layers": "conv1"}, "list of layer names or 'all'"),
                             ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"},
                              "device")]:
        with pytest.raises(rs.InputError, match=message):
            run(clf, folder, tmp_path / "store", **options)
    with pytest.raises(rs.InputError, match="no describe"):
        run(clf, torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2)), tmp_path / "store")
    with pytest.raises(rs.InputError, match="Classifier"):
        run(torch.nn.Linear(2, 2), folder, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_shards_are_self_describing_safetensors(folder, tmp_path):
    store = run(tiny_classifier(), folder, tmp_path / "store", layers=["conv1"])
    second = tmp_path / "store" / store.manifest["shards"][1]["file"]
    assert second.name.startswith("shard-000001-")
    header, _ = safetensors_header(second)
    metadata = header["__metadata__"]
    assert (metadata["start"], metadata["stop"], metadata["rows"]) == ("4", "8", "3")
    assert [{k: v for k, v in item.items() if k != "reason"} for item in json.loads(metadata["skipped"])] == [
        {"id": 5, "path": folder.samples[5][0]}]
    assert metadata["key_digest"] == store.manifest["key_digest"]
    assert {"h", "logits", "labels", "ids", "layer.conv1"} <= set(header)
    from safetensors.torch import load_file
    loaded = load_file(second)
    assert torch.equal(loaded["h"], store.read("h", slice(4, 7)))
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "store"))


def test_unfinished_store_is_not_readable(folder, tmp_path):
    clf = tiny_classifier()
    clf.encoder.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        run(clf, folder, tmp_path / "store")
    with pytest.raises(rs.DataError, match="unfinished.*rerun"):
        ActivationStore(tmp_path / "store")
    # no shard was written: a rerun with other settings starts afresh instead of refusing
    store = run(tiny_classifier(), folder, tmp_path / "store", dtype="float16")
    assert store.read("h").dtype == torch.float16



def test_a_dataset_of_only_corrupt_images(tmp_path):
    ds = image_folder(tmp_path / "images", 3, corrupt=(0, 1, 2))
    store = run(tiny_classifier(), ds, tmp_path / "store")
    assert store.num_rows == 0 and store.manifest["num_skipped"] == 3
    with pytest.raises(rs.InputError, match="no rows: all 3 samples were skipped"):
        store.read("h")
