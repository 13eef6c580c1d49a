"""The whole study at the paper's sizes (issue 12, point 1), on synthetic stores, times ``--scale``.

``python -m benchmarks scale --scale 0.25`` runs only this part (``--scale 1`` is the paper's size: 53 GB of
stores; the default, 0.02, takes a few minutes). What it does:

1. writes the paper's datasets in their real layouts (``benchmarks.scale_data``: empty image files, Broden's CSVs
   with Zipf concept frequencies);
2. takes the ``paper`` preset's config (its 28 model names and its analyses, so analyses added to the preset run
   here too; ``wiseft`` is left out: it extracts interpolated models on images; CKA uses the ``pooled`` estimator
   on the stored layer taps of the id set, since the paper's minibatch estimator runs both models on images; the
   permutation test is timed apart, see 5.) with each model standing in as a
   random-init torchvision network of the pool's width: 512 (``resnet18``: RN101, ViT-B-16, ViT-B-32 CLIP
   embeddings), 1024 (``densenet121``: RN50) and 768 (``convnext_tiny``: the supervised ViTs);
3. writes every store the study's plan asks for with :class:`~robustsig.extraction.writer.StoreWriter` under the
   key the study computes for it (the model is built, its weights fingerprinted, the dataset's file list
   digested), so ``study run`` verifies and reuses them exactly as it would real ones. Contents are synthetic:
   ``h`` is class means plus noise with planted heavy-tailed outlier dimensions, the head reads the class means,
   the logits are ``h W^T + b``; the CKA models' stores hold every layer tap, each pair sharing a signal that
   decorrelates with depth;
4. runs ``robustsig study run`` in a child process and prints the wall time of each step kind, the peak RSS, the
   floor of the concept AP step: one sort of all its elements (sum over concepts of the balanced-set size x
   directions, over every model and basis), by torch and by numpy (float64, the kernel's own sort on the CPU),
   and the floor of the pruning step: its multiply-adds at this machine's matmul rate;
5. times the concept permutation test (the default budget) on one model's singular basis, with its floor (one
   sort of every concept's directions and one float32 cumulative sum of every permuted label it drew), and
   extrapolates it to the study's 56 tests by their directions.

The data lives in ``.bench/scale-SCALE/`` and is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import OPTIONS
from benchmarks.scale_data import (activations, layer_activations, synthetic_head, write_broden,
                                   write_image_sets)

DEFAULT_SCALE = 0.02
SKIPPED = ("wiseft",)  # analyses that run models on images (the synthetic sets have no pixels)
STAND_INS = {"RN50": "torchvision:densenet121", "RN101": "torchvision:resnet18", "ViT-B-16": "torchvision:resnet18",
             "ViT-B-32": "torchvision:resnet18"}
SUPERVISED_VIT = "torchvision:convnext_tiny"
NOISE = {"imagenet": 6.0, "imagenet-v2": 7.0, "imagenet-sketch": 9.0, "imagenet-r": 9.5, "objectnet": 10.0,
         "imagenet-a": 12.0, "broden": 8.0}
SHARD = 4096
REPO = Path(__file__).resolve().parents[1]


def bench_config(roots: dict[str, Path], broden: Path, out: Path) -> dict[str, Any]:
    """The paper preset with stand-in models, the synthetic datasets and ``out`` as output and store folder."""
    import yaml

    from robustsig.study.presets import preset_yaml

    config = yaml.safe_load(preset_yaml("paper"))
    for model in config["models"]:
        vit_supervised = model["kind"] == "supervised" and model["backbone"].startswith("ViT")
        model["spec"] = SUPERVISED_VIT if vit_supervised else STAND_INS[model["backbone"]]
    config["datasets"]["id"]["root"] = str(roots["imagenet"])
    for entry in config["datasets"]["shift"]:
        entry["root"] = str(roots[entry["kind"]])
    config["datasets"]["broden"]["root"] = str(broden)
    config["analyses"] = {k: v for k, v in config["analyses"].items() if k not in SKIPPED}
    # the paper's CKA estimator (minibatch) runs both models on images: extraction-side work the synthetic sets
    # cannot feed; the analysis-side CKA is the pooled estimator on the stored layer taps, on the id set
    id_set = config["datasets"]["id"]
    config["analyses"]["cka"].update(estimator="pooled", dataset=id_set.get("name", id_set["kind"]))
    # the permutation test is timed apart (significance_probe) unless --significance runs it in the study
    if not OPTIONS.get("significance"):
        config["analyses"]["concepts"]["permutations"] = 0
    config.update(output_dir=str(out), store_dir=str(out / "store"), device="cpu", workers=0,
                  description="bench_scale: synthetic stores at the paper's sizes")
    return config


def _true_classes(dataset: Any) -> torch.Tensor:
    labels = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
    if getattr(dataset, "class_map", None):
        first = torch.tensor([ids[0] for ids in dataset.class_map])
        return first[labels]
    return labels


def write_stores(config: Any, log_path: Path) -> dict[str, int]:
    """Every store the study's plan asks for, keyed as the study keys it; returns counts of written/kept."""
    from robustsig.data.registry import open_dataset
    from robustsig.extraction.extractor import store_key
    from robustsig.extraction.key import key_digest
    from robustsig.extraction.store import MANIFEST, read_json
    from robustsig.study.registry import build_plan
    from robustsig.study.runlog import RunLog
    from robustsig.study.stores import ExtractTask
    from robustsig.study.subjects import Classifiers

    tasks = [t for t in build_plan(config, config) if isinstance(t, ExtractTask)]
    classifiers = Classifiers(config, "cpu", RunLog(log_path, echo=False))
    datasets: dict[str, Any] = {}
    counts = {"written": 0, "kept": 0}
    for task in tasks:
        entry = config.dataset(task.dataset)
        if task.dataset not in datasets:
            datasets[task.dataset] = open_dataset(entry.kind, entry.root, **entry.options)
        dataset = datasets[task.dataset]
        clf = classifiers.get(task.subject)
        layers = None if not task.layers else ("all" if task.layers == "all" else list(task.layers))
        key = store_key(clf, dataset, layers, pooling=task.pooling, autocast=None)
        path = Path(config.store_dir) / task.subject.name / task.dataset
        if (path / MANIFEST).is_file() and read_json(path / MANIFEST).get("key") == key \
                and read_json(path / MANIFEST).get("complete"):
            counts["kept"] += 1
            continue
        _write_store(path, key, key_digest(key), clf, config.model(task.subject.model), dataset, task.dataset, config)
        counts["written"] += 1
        print(f"  store {task.subject.name}/{task.dataset}: {len(dataset)} rows", flush=True)
    return counts


def _pair_of(config: Any, model: str) -> tuple[str, bool] | None:
    cka = config.analyses.cka
    for pair in (cka.pairs if cka else []):
        if model in (pair.model_a, pair.model_b):
            return f"{pair.model_a}|{pair.model_b}", model == pair.model_b
    return None


def _write_store(path: Path, key: dict, digest: str, clf: Any, entry: Any, dataset: Any, name: str,
                 config: Any) -> None:
    from robustsig.extraction.store import LAYER_PREFIX
    from robustsig.extraction.writer import StoreWriter

    width, classes = clf.W.shape[1], clf.W.shape[0]
    W, means = synthetic_head(entry.name, width, classes)
    b = 0.01 * torch.randn(classes, generator=torch.Generator().manual_seed(len(entry.name)))
    layer_names = list(key["layers"])
    layer_widths: dict[str, int] = {}
    if layer_names:
        with torch.no_grad():
            _, _, probe = clf.forward_with_layers(torch.zeros(1, 3, 224, 224), layer_names, key["pooling"])
        layer_widths = {layer: value.shape[1] for layer, value in probe.items()}
    pair = _pair_of(config, entry.name)
    writer = StoreWriter(path, key, digest, SHARD, len(dataset))
    try:
        if writer.prepare(True, {"W": W, "b": b}):
            return
        begin = time.perf_counter()
        kind = getattr(dataset, "kind", name)
        labels = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
        if kind == "broden":
            classes_of = torch.randint(0, classes, (len(dataset),), generator=torch.Generator().manual_seed(0))
        else:
            classes_of = _true_classes(dataset)
        for index, start in enumerate(range(0, len(dataset), SHARD)):
            stop = min(start + SHARD, len(dataset))
            ids = torch.arange(start, stop)
            h = activations(entry.name, entry.kind, name, ids, classes_of[start:stop], means, NOISE.get(kind, 8.0))
            tensors = {"h": h, "logits": torch.addmm(b, h, W.T), "labels": labels[start:stop], "ids": ids}
            for i, layer in enumerate(layer_names):
                tensors[LAYER_PREFIX + layer] = layer_activations(pair[0] if pair else entry.name, i, len(layer_names),
                                                                  layer_widths[layer], bool(pair and pair[1]), ids,
                                                                  name)
            writer.write_shard(index, start, stop, {k: v.contiguous() for k, v in tensors.items()}, [], None)
        seconds = time.perf_counter() - begin
        writer.finalize({
            "model": {"spec": clf.spec, "meta": clf.meta, "num_classes": classes, "width": width,
                      "classnames": clf.classnames},
            "run": {"synthetic": "benchmarks.bench_scale", "torch": torch.__version__},
            "summary": {"computed": len(dataset), "seconds": round(seconds, 3), "images_per_s": None,
                        "reused_shards": 0, "written_shards": index + 1, "world_size": 1, "ranks": [],
                        "store": str(path.resolve())}})
    finally:
        writer.release()


_CHILD = """
import json, sys, time
from robustsig.runner import run_study
begin = time.perf_counter()
summary = run_study(sys.argv[1], progress=False)
print(json.dumps({"seconds": time.perf_counter() - begin, "ok": summary.ok,
                  "steps": [[s.tag, s.status, s.seconds, s.message] for s in summary.steps]}))
"""


def run_study_child(config_path: Path) -> tuple[dict[str, Any], float]:
    """``run_study`` in a child process: its summary and the child's peak RSS (GB)."""
    import robustsig

    # the child runs the very robustsig this process imported (the one that keyed the stores)
    source = str(Path(robustsig.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=source + os.pathsep + os.environ.get("PYTHONPATH", ""), ROBUSTSIG_PROGRESS="0")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(config_path)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"study run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(done.stdout.strip().splitlines()[-1]), peak_kb / 1024 ** 2


def ap_floor(config: Any) -> tuple[int, float, float]:
    """``(elements, torch_rate, numpy_rate)``: the elements of every concept AP step (balanced-set size x
    directions, over every model and basis), and the rates (elements/s) of torch's sort of each set's rows and of
    numpy's sort of them as float64 (what the kernel sorts on the CPU), timed on 512 directions of every set."""
    from robustsig.data.registry import open_dataset
    from robustsig.extraction.store import ActivationStore

    options = config.analyses.concepts
    broden = config.datasets.broden
    dataset = open_dataset("broden", broden.root, **broden.options)
    sizes = [len(s.indices) for s in dataset.balanced_sets(min_positives=options.min_positives, seed=options.seed)]
    directions = 0
    for model in config.models:
        manifest = ActivationStore(Path(config.store_dir) / model.name / broden.name).manifest
        width, classes = manifest["tensors"]["h"]["shape"][1], manifest["head"]["W"]["shape"][0]
        directions += sum(min(width, classes) if basis == "singular" else width for basis in options.bases)
    elements = sum(sizes) * directions
    D = 512
    scores = [torch.randn(D, n) for n in sizes]
    rates = []
    for sort in (lambda s: torch.sort(s, dim=1), lambda s: np.sort(s.numpy().astype(np.float64), axis=1)):
        times = []
        for _ in range(3):
            begin = time.perf_counter()
            for s in scores:
                sort(s)
            times.append(time.perf_counter() - begin)
        rates.append(sum(sizes) * D / sorted(times)[1])
    return elements, rates[0], rates[1]


def pruning_floor(config: Any) -> tuple[float, float]:
    """``(flops, seconds)``: the multiply-adds of the pruning step (per model and dataset, one projection ``h V``
    and one evaluation of the scored logits per order: every level comes from cumulative blocks) and their time
    at the rate of one float32 matmul of a store batch by a 1,024-wide head, timed here."""
    from robustsig.data.registry import open_dataset
    from robustsig.data.scoring import pruning_scoring
    from robustsig.metrics.scoring import TopOneRule
    from robustsig.extraction.store import ActivationStore

    options = config.analyses.pruning
    flops = 0.0
    for entry in config.datasets.evaluation():
        dataset = open_dataset(entry.kind, entry.root, **entry.options)
        scoring = pruning_scoring(dataset)
        for model in config.models:
            manifest = ActivationStore(Path(config.store_dir) / model.name / entry.name).manifest
            rows, width = manifest["tensors"]["h"]["shape"]
            classes = manifest["head"]["W"]["shape"][0]
            scored = len(TopOneRule(classes, class_indices=scoring["class_mask"],
                                    class_map=scoring["class_map"]).columns)
            rank = min(width, classes)
            flops += 2.0 * rows * rank * (width + scored * len(options.orders))
    a, b = torch.randn(4096, 1024), torch.randn(1024, 1000)
    times = []
    for _ in range(5):
        begin = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - begin)
    rate = 2.0 * 4096 * 1024 * 1000 / sorted(times)[2]
    return flops, flops / rate


def significance_probe(config: Any, permutations: int) -> None:
    """The permutation test of one model's singular basis at the preset's settings, timed apart from the study;
    printed with its floor (``bench_significance.permutation_floor``) and extrapolated to the study's tests by their
    directions (the test's cost is linear in them)."""
    from benchmarks.bench_significance import permutation_floor
    from robustsig.metrics.significance import DEFAULT_STOP_AFTER, concatenate, permutation_p_values
    from robustsig.study.analyses.concepts import ap as concepts_analysis

    options = config.analyses.concepts
    model = config.models[0].name
    store, members = _concept_sets(config, model)
    seconds, tests, elements, start, width = 0.0, [], [], 0, 0
    for scores, labels in concepts_analysis.concept_score_groups(store, members, "singular"):
        begin = time.perf_counter()
        tests.append(permutation_p_values(scores, labels, threshold=options.threshold, permutations=permutations,
                                          seed=options.seed, orientation=options.orientation, first_concept=start,
                                          stop_after=DEFAULT_STOP_AFTER))
        seconds += time.perf_counter() - begin
        elements += [s.numel() for s in scores]
        start += len(scores)
        width = scores[0].shape[1]
    test = concatenate(tests)
    floor = permutation_floor(np.array(elements), test.drawn.numpy(), width)
    directions = sum(_directions(config, entry.name, basis) for entry in config.models for basis in options.bases)
    print(f"  concept significance ({model}, singular basis, {len(members)} concepts x {width} directions, at most "
          f"{permutations:,} permutations, stopping at the {DEFAULT_STOP_AFTER}th exceedance): {seconds:.1f} s; "
          f"{(test.drawn.numpy() * elements).sum() / max(sum(elements), 1):.0f} permutations drawn per element; "
          f"floor {floor:.1f} s = {seconds / floor:.1f}x; the study's {len(config.models) * len(options.bases)} "
          f"tests ({directions:,} directions): ~{seconds * directions / width / 60:.0f} min", flush=True)


def significance_floor(config: Any, measured: float) -> None:
    """The floor of the study's own permutation tests (``--significance``): every model and basis's concepts, at
    the permutations each drew (from the tests' sidecars), by ``bench_significance.permutation_floor``."""
    from benchmarks.bench_significance import permutation_floor

    options = config.analyses.concepts
    sizes = np.array([len(rows) for _, rows, _ in _concept_sets(config, config.models[0].name)[1]])
    floor, drawn_total, tests = 0.0, 0, 0
    for entry in config.models:
        for basis in options.bases:
            sidecar = (Path(config.output_dir) / "results" / "concept_ap" / f"{entry.name}_{basis}_significance.json")
            detail = json.loads(sidecar.read_text())
            drawn = np.array(detail["permutations_drawn"])
            width = _directions(config, entry.name, basis)
            floor += permutation_floor(sizes * width, drawn, width)
            drawn_total += int(drawn.sum())
            tests += 1
    print(f"  concept significance in the study: {tests} tests, {drawn_total / max(tests * len(sizes), 1):.0f} "
          f"permutations drawn per concept on average; measured {measured:.1f} s; floor {floor:.1f} s = "
          f"{measured / max(floor, 1e-9):.1f}x", flush=True)


def _concept_sets(config: Any, model: str) -> tuple[Any, list]:
    """``model``'s Broden store and the concepts' balanced sets the study tests (the same for every model)."""
    from robustsig.data.registry import open_dataset
    from robustsig.extraction.store import ActivationStore
    from robustsig.study.streams import concept_members

    options, broden = config.analyses.concepts, config.datasets.broden
    store = ActivationStore(Path(config.store_dir) / model / broden.name)
    dataset = open_dataset("broden", broden.root, **broden.options)
    return store, concept_members(store, dataset, min_positives=options.min_positives, seed=options.seed)


def _directions(config: Any, model: str, basis: str) -> int:
    from robustsig.extraction.store import ActivationStore

    manifest = ActivationStore(Path(config.store_dir) / model / config.datasets.broden.name).manifest
    width, classes = manifest["tensors"]["h"]["shape"][1], manifest["head"]["W"]["shape"][0]
    return min(width, classes) if basis == "singular" else width


def run() -> None:
    import yaml

    from robustsig.study.config import validate_study_config

    scale = float(OPTIONS.get("scale", DEFAULT_SCALE))
    root = REPO / ".bench" / f"scale-{scale:g}"
    print(f"paper-scale study at scale {scale:g} in {root} (torch threads {torch.get_num_threads()})", flush=True)
    begin = time.perf_counter()
    roots = write_image_sets(root / "data", scale)
    broden = write_broden(root / "data", scale)
    config_data = bench_config(roots, broden, root / "study")
    config = validate_study_config(config_data)
    config_path = root / "study.yaml"
    config_path.write_text(yaml.safe_dump(config_data, sort_keys=False))
    print(f"datasets written in {time.perf_counter() - begin:.1f} s", flush=True)
    begin = time.perf_counter()
    counts = write_stores(config, root / "bench.log")
    disk = sum(f.stat().st_size for f in (root / "study" / "store").rglob("*") if f.is_file())
    print(f"stores: {counts['written']} written, {counts['kept']} kept in {time.perf_counter() - begin:.1f} s, "
          f"{disk / 1e9:.2f} GB on disk", flush=True)
    shutil.rmtree(root / "study" / "results", ignore_errors=True)  # every analysis computed afresh
    summary, peak_gb = run_study_child(config_path)
    by_tag: dict[str, list[float]] = defaultdict(list)
    for tag, status, seconds, message in summary["steps"]:
        if status == "failed":
            print(f"  FAILED [{tag}] {message}", flush=True)
        by_tag[tag].append(seconds)
    total = summary["seconds"]
    print(f"study run: {total:.1f} s wall, peak RSS {peak_gb:.2f} GB [target <= 8 GB: "
          f"{'met' if peak_gb <= 8 else 'NOT met'}], ok={summary['ok']}", flush=True)
    for tag, seconds in sorted(by_tag.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {tag:<22} {sum(seconds):8.1f} s  ({len(seconds)} steps, {100 * sum(seconds) / total:4.1f} %)",
              flush=True)
    other = total - sum(sum(s) for s in by_tag.values())
    print(f"  {'(report etc.)':<22} {other:8.1f} s", flush=True)
    if config.analyses.concepts is not None:
        elements, torch_rate, numpy_rate = ap_floor(config)
        ap_seconds = sum(by_tag.get("concept_ap", []))
        for name, rate in (("torch", torch_rate), ("numpy (float64)", numpy_rate)):
            print(f"  concept AP: {elements / 1e9:.2f} G elements; floor: one {name} sort of them at "
                  f"{rate / 1e6:.0f} M elements/s = {elements / rate:.1f} s; measured {ap_seconds:.1f} s = "
                  f"{ap_seconds * rate / elements:.1f}x that floor", flush=True)
    if config.analyses.pruning is not None:
        flops, floor = pruning_floor(config)
        measured = sum(by_tag.get("pruning", []))
        print(f"  pruning: {flops / 1e12:.2f} TFLOP (a projection and one scored-logit evaluation per order for every "
              f"image); floor at this machine's matmul rate {floor:.1f} s; measured {measured:.1f} s = "
              f"{measured / max(floor, 1e-9):.1f}x the floor", flush=True)
    if scale < 1:
        print(f"  extrapolated to scale 1 (linear in images): {total / scale / 60:.0f} min", flush=True)
    if config.analyses.concepts is not None and config.analyses.concepts.permutations:
        significance_floor(config, sum(by_tag.get("concept_significance", [])))
    elif config.analyses.concepts is not None:
        from robustsig.metrics.significance import DEFAULT_PERMUTATIONS
        significance_probe(config, DEFAULT_PERMUTATIONS)
    if not OPTIONS.get("keep"):
        shutil.rmtree(root)
