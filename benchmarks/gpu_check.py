"""`make gpu-check`: every CUDA path of robustsig on synthetic data, compared with the CPU, in a few minutes.

    python -m benchmarks.gpu_check                  # on a CUDA machine (says so and exits 0 on one without)
    python -m benchmarks.gpu_check --device cpu     # the self-check: the same code, CPU against CPU, tiny sizes
    python -m benchmarks.gpu_check --only extraction,training   # some paths only (see --help)

Each path runs once on the CPU (the reference) and once on the checked device, on the same synthetic inputs, and
its results are compared within a tolerance stated (and justified) below:

- the AP kernel (``rs.average_precision_matrix`` on per-concept sets with ``device``), the permutation test
  (``rs.concept_significance`` with ``device``), the pruning curves (``rs.PruningCurves`` on device tensors), the
  paper's minibatch CKA (``rs.MinibatchCKAMatrix`` on device tensors, and the study's paired pass of two real
  models), low-rank evaluation (calibration, a low-rank model's logits, ``rs.low_rank_curve``), extraction
  (``rs.extract`` of the bundled MobileNetV2 in fp32 and under bf16 autocast, on JPEG and PNG files written to a
  temporary folder), a ``torchrun`` finetuning job, and a collective over the process-group backend of the device;
- per path it prints the largest difference against the CPU, both wall times and the throughput; for extraction
  also the images/s of a bare forward loop against the FLOP-bound limit (FLOPs per image from
  ``torch.utils.flop_counter`` divided into the GPU's peak FLOP/s from :data:`PEAK_FLOPS`);
- it ends with one verdict line per path (``ok`` or ``MISMATCH``, with the tolerance used; ``ERROR`` when the path
  raised) and exits non-zero unless every path is ok.

GPU wall times are taken between ``torch.cuda.synchronize()`` calls (kernels run asynchronously); each re-runnable
path runs once on the GPU before it is timed (kernel loading, cuDNN's algorithm search), the CPU reference once.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

import robustsig as rs
from robustsig.metrics.significance import DEFAULT_STOP_AFTER
from benchmarks.bench_ap import balanced_sets

CPU = torch.device("cpu")
Values = dict[str, torch.Tensor]
Work = Callable[[torch.device], tuple[Values, float]]
"""One side of a check: run the path on a device, return what is compared and the units of work done (for the
throughput)."""

# Dense peak FLOP/s (no structured sparsity) from NVIDIA's data sheets: (name fragment, bf16, tf32, fp32). The first
# fragment found in ``torch.cuda.get_device_properties().name`` wins, so the longer names come first.
PEAK_FLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("H200 NVL", 835e12, 418e12, 60e12),
    ("H200", 989e12, 495e12, 67e12),
    ("H100 NVL", 835e12, 418e12, 60e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 495e12, 67e12),          # SXM5: "NVIDIA H100 80GB HBM3"
    ("A100", 312e12, 156e12, 19.5e12),        # SXM4 and PCIe alike
)

TRAIN_SPEC = "timm:test_convnext"
"""A tiny random-init convnet for the torchrun job (LayerNorm, no BatchNorm: its loss does not depend on how the
global batch is split over processes)."""


@dataclass(frozen=True)
class Sizes:
    """How much each path computes: ``TINY`` for the self-check, ``FULL`` for a GPU (CPU references included, the
    whole check stays well under 5 minutes on a 16-core host)."""

    model: str                     # the classifier of the image paths (extraction, CKA, low rank) and its taps
    layers: tuple[str, ...]
    image_size: int | None         # images resized and cropped to this size (None: the model's own preprocessing)

    concepts: int                  # AP kernel: concepts x directions, samples per concept in [low, high)
    directions: int
    samples: tuple[int, int]
    tested_concepts: int           # permutation test
    tested_directions: int
    permutations: int
    rows: int                      # pruning: activations x width, classes
    width: int
    classes: int
    cka_batches: int               # minibatch CKA on synthetic layers: batches x minibatch, layers of each side
    cka_minibatch: int
    cka_layers: int
    images: int                    # image files for extraction, paired CKA and low rank
    batch: int
    workers: int                   # DataLoader workers
    forward_batch: int             # bare forward loop (FLOP-bound comparison)
    forward_steps: int
    calibration_images: int
    train_images: int              # the torchrun job: images, global batch (2 steps)
    train_batch: int


TINY = Sizes(model="timm:test_efficientnet", layers=("block1", "block3"), image_size=32, concepts=12, directions=16,
             samples=(20, 60), tested_concepts=4, tested_directions=16, permutations=99, rows=600, width=32,
             classes=10, cka_batches=2, cka_minibatch=16, cka_layers=2, images=8, batch=4, workers=0, forward_batch=2,
             forward_steps=1, calibration_images=4, train_images=8, train_batch=4)
FULL = Sizes(model="bundled:mobilenet_v2", layers=("features4", "features10", "features17"), image_size=None,
             concepts=300, directions=512, samples=(40, 400), tested_concepts=24, tested_directions=256,
             permutations=1000, rows=20_000, width=1024, classes=1000, cka_batches=8, cka_minibatch=256, cka_layers=6,
             images=512, batch=128, workers=6, forward_batch=256, forward_steps=20, calibration_images=128,
             train_images=32, train_batch=16)


# --- comparison ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """Allowed ``|result - reference|`` per element: ``atol + rtol * |reference| + scale * max |reference|``.

    Attributes:
        why: the reason, printed with the verdict.
    """

    atol: float = 0.0
    rtol: float = 0.0
    scale: float = 0.0
    why: str = ""

    def allowed(self, reference: torch.Tensor) -> torch.Tensor:
        size = reference.abs()
        return self.atol + self.rtol * size + self.scale * (float(size.max()) if size.numel() else 0.0)

    def __str__(self) -> str:
        terms = [f"{self.atol:.3g}" if self.atol else "", f"{self.rtol:.3g}|ref|" if self.rtol else "",
                 f"{self.scale:.3g} max|ref|" if self.scale else ""]
        return "|diff| <= " + (" + ".join(t for t in terms if t) or "0")


@dataclass(frozen=True)
class Difference:
    """One compared quantity: its largest absolute difference, the worst ``difference / allowed`` ratio (<= 1 is
    within tolerance) and, when the two cannot be compared (shapes, NaNs, nothing to compare), why."""

    largest: float
    ratio: float
    tolerance: Tolerance
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.ratio <= 1.0


def compare(reference: torch.Tensor, result: torch.Tensor, tolerance: Tolerance) -> Difference:
    """``result`` against ``reference`` elementwise within ``tolerance`` (NaN only where the reference has NaN)."""
    a = torch.as_tensor(reference).detach().to(CPU, torch.float64)
    b = torch.as_tensor(result).detach().to(CPU, torch.float64)
    if a.shape != b.shape:
        return Difference(float("inf"), float("inf"), tolerance, f"shape {tuple(b.shape)}, expected {tuple(a.shape)}")
    if a.numel() == 0:
        return Difference(float("inf"), float("inf"), tolerance, "nothing to compare (empty)")
    if not torch.equal(a.isnan(), b.isnan()):
        return Difference(float("inf"), float("inf"), tolerance, "NaN where the reference has none, or the reverse")
    difference = torch.nan_to_num(a - b).abs()
    allowed = tolerance.allowed(torch.nan_to_num(a))
    ratios = torch.where(difference > 0, difference / allowed, 0.0)  # 0 allowed and 0 difference: ratio 0
    return Difference(float(difference.max()), float(ratios.max()), tolerance)


# --- checks ----------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One path: what it runs on a device, how its results are compared, and what its throughput counts.

    Attributes:
        name: the path's name in the report.
        what: the API and the sizes, one line.
        work: runs the path on a device (see :data:`Work`).
        tolerances: per key of the values ``work`` returns.
        unit: what the units of work are (``"images"``, ``"AP values"``...).
        reference: runs the CPU reference when it is not ``work`` on the CPU (the training job: one process).
        rerun: ``work`` may run twice on the device (a warm-up, then the timed run).
        extra: after the comparison, more measurements on the checked device (printed lines).
    """

    name: str
    what: str
    work: Work
    tolerances: dict[str, Tolerance]
    unit: str
    reference: Work | None = None
    rerun: bool = True
    extra: Callable[[torch.device], list[str]] | None = None


@dataclass
class Outcome:
    """What running one check gave (``error``: the exception that stopped it)."""

    name: str
    differences: dict[str, Difference] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "ok" if all(d.ok for d in self.differences.values()) else "MISMATCH"

    def summary(self) -> str:
        """The verdict line: the key with the worst ratio and its tolerance."""
        if self.error is not None:
            return f"{self.name}: ERROR ({self.error})"
        key, worst = max(self.differences.items(), key=lambda item: (not item[1].ok, item[1].ratio))
        detail = worst.problem or f"largest |diff| {worst.largest:.3g}"
        return f"{self.name}: {self.verdict} ({key}: {detail}; tolerance {worst.tolerance})"

    def fail(self, error: Exception) -> None:
        """Record ``error`` and the end of its traceback."""
        self.error = f"{type(error).__name__}: {error}"
        self.lines += traceback.format_exc().rstrip().splitlines()[-12:]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Work, device: torch.device) -> tuple[Values, float, float]:
    """``work(device)``'s values and units, and its wall time with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    values, units = work(device)
    synchronize(device)
    return values, units, time.perf_counter() - start


def run_check(check: Check, target: torch.device) -> Outcome:
    """Run ``check``'s reference on the CPU and its work on ``target``, and compare them key by key."""
    outcome = Outcome(check.name)
    try:
        reference, reference_units, cpu_seconds = timed(check.reference or check.work, CPU)
        if check.rerun and target.type == "cuda":
            check.work(target)  # warm-up: kernel loading, cuDNN's algorithm search, allocator growth
        result, units, seconds = timed(check.work, target)
        missing = sorted(set(check.tolerances) - set(reference) | set(check.tolerances) - set(result))
        if missing:
            raise KeyError(f"the path returned no {missing}")
        for key, tolerance in check.tolerances.items():
            outcome.differences[key] = compare(reference[key], result[key], tolerance)
        for key, difference in outcome.differences.items():
            shown = difference.problem or f"largest |diff| {difference.largest:.3g}, {difference.ratio:.2g} of allowed"
            outcome.lines.append(f"{key}: {shown} ({difference.tolerance}: {difference.tolerance.why})")
        outcome.lines.append(f"reference on cpu {cpu_seconds:.3g} s ({reference_units / cpu_seconds:,.0f} "
                             f"{check.unit}/s); {target.type} {seconds:.3g} s ({units / seconds:,.0f} {check.unit}/s)")
        if check.extra is not None:
            outcome.lines += check.extra(target)
    except Exception as error:  # one broken path must not hide the others: report it and go on
        outcome.fail(error)
    return outcome


def on(device: torch.device, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def write_images(root: Path, count: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """``count`` images in four class folders, JPEG and PNG in turn: smooth random colour fields plus noise, each
    unlike the others (features that barely vary between images would make CKA measure rounding noise)."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        field = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.float64) + rng.normal(0, 12, (size[1], size[0], 3))
        path = root / f"c{n % 4}" / f"{n:05d}.{'png' if n % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return root


class Context:
    """What the checks share: the sizes, the checked device, a temporary folder, and the image folder and model of the
    image paths (written and loaded once, on first use)."""

    def __init__(self, sizes: Sizes, target: torch.device, work_dir: Path) -> None:
        self.sizes, self.target, self.work_dir = sizes, target, work_dir
        self._dataset = self._classifier = None
        self._stores = itertools.count()

    @property
    def dataset(self):
        if self._dataset is None:
            size = self.sizes.image_size
            transform = None if size is None else transforms.Compose(
                [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
            self._dataset = rs.open_dataset("folder", write_images(self.work_dir / "images", self.sizes.images),
                                            transform=transform)
        return self._dataset

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` of the dataset, preprocessed."""
        image = self.dataset[index][0]
        return image if torch.is_tensor(image) else self.classifier().preprocess(image)

    def classifier(self) -> rs.Classifier:
        """A fresh CPU copy of the model: extraction leaves a classifier on its device, in channels-last."""
        if self._classifier is None:
            with warnings.catch_warnings():  # the self-check's model is a random-init one
                warnings.filterwarnings("ignore", message=".*randomly initialised", category=UserWarning)
                self._classifier = rs.load_classifier(self.sizes.model, device="cpu")
        return copy.deepcopy(self._classifier)

    def image_shape(self) -> tuple[int, ...]:
        """The shape of one preprocessed image."""
        return tuple(self.image(0).shape)

    def store_dir(self) -> Path:
        return self.work_dir / f"store{next(self._stores)}"


def ap_check(context: Context) -> Check:
    sizes = context.sizes
    rng = np.random.default_rng(0)
    counts = rng.integers(*sizes.samples, size=sizes.concepts)
    scores, labels = balanced_sets(counts, sizes.directions, seed=1)
    for c in range(0, sizes.concepts, 5):  # every fifth concept has tied scores: the tie-group path runs too
        scores[c] = (scores[c] * 4).round() / 4

    def work(device: torch.device) -> tuple[Values, float]:
        ap = rs.average_precision_matrix(on(device, scores), on(device, labels), orientation="both", device=device)
        return {"ap": ap}, float(ap.numel())

    # counts are exact integers on both devices and the float32 scores sort alike (ties included); only the order
    # of the float64 sums differs
    tolerance = Tolerance(atol=1e-12, why="exact counts, float64 sums in another order")
    return Check("AP kernel", f"rs.average_precision_matrix, {sizes.concepts} per-concept sets x {sizes.directions} "
                 f"directions, {sizes.samples[0]}-{sizes.samples[1]} samples, orientation both, ties in 1/5",
                 work, {"ap": tolerance}, "AP values")


def permutation_check(context: Context) -> Check:
    sizes = context.sizes
    rng = np.random.default_rng(2)
    counts = rng.integers(*sizes.samples, size=sizes.tested_concepts)
    scores, labels = balanced_sets(counts, sizes.tested_directions, seed=3)
    for c in range(0, sizes.tested_concepts, 4):  # planted concepts: they draw every permutation (no early stop)
        scores[c][:, c % sizes.tested_directions] += 2.0 * labels[c]
    permutations = sizes.permutations

    def work(device: torch.device) -> tuple[Values, float]:
        result = rs.concept_significance(on(device, scores), on(device, labels), permutations=permutations, seed=0,
                                         orientation="both", device=device)
        return ({"max_ap": result.test.max_ap, "p_values": result.p_values},
                float(result.test.drawn.sum()) * sizes.tested_directions)

    stop = DEFAULT_STOP_AFTER
    return Check(
        "permutation test", f"rs.concept_significance, {sizes.tested_concepts} concepts x "
        f"{sizes.tested_directions} directions, {permutations} permutations (stop at {stop} exceedances)", work,
        {"max_ap": Tolerance(atol=1e-12, why="the observed AP is computed in float64 from exact counts"),
         # the null APs are float32 sums whose order differs between devices, so a permuted AP within rounding
         # (~1e-7) of the observed one can count as an exceedance on one device only: one exceedance moves p by
         # 1/(1+B), or, for a concept stopped at its 20th, moves the stop to a neighbouring exceedance (~p/20)
         "p_values": Tolerance(atol=1 / (1 + permutations), rtol=5 / stop,
                               why="one float32 exceedance more or less (a few gaps of a stopped concept)")},
        "permuted APs")


def pruning_check(context: Context) -> Check:
    sizes = context.sizes
    g = torch.Generator().manual_seed(4)
    h = torch.randn(sizes.rows, sizes.width, generator=g) * (1 + 4 * torch.rand(sizes.width, generator=g))
    W = torch.randn(sizes.classes, sizes.width, generator=g) / sizes.width ** 0.5
    b = 0.1 * torch.randn(sizes.classes, generator=g)
    labels = (h @ W.T + b + 0.5 * torch.randn(sizes.rows, sizes.classes, generator=g)).argmax(1)  # ~half right
    orders = ("singular", "importance", "random")
    chunk = max(1, sizes.rows // 4)

    def work(device: torch.device) -> tuple[Values, float]:
        x, y = h.to(device), labels.to(device)
        importance = rs.direction_importance(W, x)
        curves = rs.PruningCurves(W, b, orders=orders, importance=importance)
        for start in range(0, sizes.rows, chunk):
            curves.update(x[start:start + chunk], y[start:start + chunk])
        tables = curves.compute()
        accuracy = torch.stack([torch.as_tensor(tables[o]["accuracy"]) for o in orders])
        return {"importance": importance, "accuracy": accuracy}, float(sizes.rows)

    flips = 1 + sizes.rows // 1000
    return Check(
        "pruning curves", f"rs.direction_importance + rs.PruningCurves on device tensors, {sizes.rows} x "
        f"{sizes.width} activations, {sizes.classes} classes, 65 levels x {len(orders)} orders", work,
        {"importance": Tolerance(rtol=1e-5, why="float32 projections summed in another order, float64 means"),
         # a top-1 flips only where two float32 logits tie to rounding (the curve adds blocks in another order)
         "accuracy": Tolerance(atol=flips / sizes.rows, why=f"{flips} near-tied top-1 flip(s) per level")},
        "rows")


def cka_check(context: Context) -> Check:
    sizes = context.sizes
    g = torch.Generator().manual_seed(5)
    n = sizes.cka_batches * sizes.cka_minibatch
    a = [torch.randn(n, 16, 4 + i, 4 + i, generator=g) for i in range(sizes.cka_layers)]
    mix = [torch.randn(x[0].numel(), 64, generator=g) for x in a]
    b = [x.flatten(1) @ m + 0.5 * (i + 1) * torch.randn(n, 64, generator=g) for i, (x, m) in enumerate(zip(a, mix))]

    def work(device: torch.device) -> tuple[Values, float]:
        accumulator = rs.MinibatchCKAMatrix()
        xs, ys = on(device, a), on(device, b)
        for start in range(0, n, sizes.cka_minibatch):
            rows = slice(start, start + sizes.cka_minibatch)
            accumulator.update([x[rows] for x in xs], [y[rows] for y in ys])
        return {"cka": accumulator.compute()}, float(n)

    return Check("minibatch CKA", f"rs.MinibatchCKAMatrix on device tensors, {sizes.cka_layers} x {sizes.cka_layers} "
                 f"layers, {sizes.cka_batches} minibatches of {sizes.cka_minibatch}", work,
                 {"cka": Tolerance(atol=1e-5, why="float32 Gram products summed in another order, float64 HSIC")},
                 "images")


# fp32 on a GPU runs convolutions in TF32 (cuDNN's default, torch.backends.cudnn.allow_tf32): inputs and weights
# rounded to 10 mantissa bits. Simulated on the CPU (both operands of every convolution rounded so) on 32 images of
# write_images, MobileNetV2's h, logits and layer taps moved by at most 0.43% of their largest entry; under bf16
# autocast on the CPU (8 bits, bf16 outputs) by 7.4%. The tolerances leave 7x and 2.7x of room.
FP32_MODEL = Tolerance(scale=0.03, why="TF32 convolutions (0.43% of max|ref| simulated)")
BF16_MODEL = Tolerance(scale=0.2, why="bf16 autocast (7.4% of max|ref| on the CPU)")


def extraction_check(precision: str) -> Callable[[Context], Check]:
    """The extraction check in ``"fp32"`` or under ``"bf16"`` autocast, against the CPU in fp32."""

    def build(context: Context) -> Check:
        sizes = context.sizes
        keys = ("h", "logits", *sizes.layers)

        def extraction(autocast: str | None) -> Work:
            def work(device: torch.device) -> tuple[Values, float]:
                store = rs.extract(context.classifier(), context.dataset, context.store_dir(),
                                   layers=list(sizes.layers), batch_size=sizes.batch, num_workers=sizes.workers,
                                   device=device, autocast=autocast, progress=False)
                return {key: store.read(key) for key in keys}, float(store.num_rows)
            return work

        def extra(device: torch.device) -> list[str]:
            return flop_bound(context.classifier(), context.image_shape(), device, precision, sizes)

        autocast = "bf16" if precision == "bf16" else None
        tolerance = BF16_MODEL if precision == "bf16" else FP32_MODEL
        return Check(f"extraction {precision}", f"rs.extract({sizes.model}, {sizes.images} images, layers "
                     f"{', '.join(sizes.layers)}, autocast={autocast}), data loading and store writing included",
                     extraction(autocast), dict.fromkeys(keys, tolerance), "images", reference=extraction(None),
                     extra=extra)

    build.__name__ = f"extraction_{precision}_check"
    return build


def paired_cka_check(context: Context) -> Check:
    from robustsig.study.analyses.cka.estimators import paired_cka

    sizes = context.sizes
    other = context.classifier()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # a second model near the first: CKA values below 1 that differ per layer
        for parameter in other.encoder.parameters():
            parameter.add_(0.2 * parameter.std().nan_to_num() * torch.randn(parameter.shape, generator=g))
    minibatch = max(4, sizes.images // 4)

    def pass_(device: torch.device, autocast: str | None) -> torch.Tensor:
        result = paired_cka(context.classifier(), copy.deepcopy(other), context.dataset, sizes.layers, sizes.layers,
                            minibatch=minibatch, device=str(device), workers=sizes.workers, autocast=autocast)
        return result.values

    def work(device: torch.device) -> tuple[Values, float]:
        return {"fp32": pass_(device, None), "bf16": pass_(device, "bf16")}, 4.0 * sizes.images

    def reference(device: torch.device) -> tuple[Values, float]:  # bf16 is compared with fp32 too
        values = pass_(device, None)
        return {"fp32": values, "bf16": values}, 2.0 * sizes.images

    # measured on the CPU, MobileNetV2 and this copy: bf16 autocast moved every CKA value by at most 0.005 in
    # minibatches of 128 (FULL's), 0.007 in minibatches of 32 and 0.031 in minibatches of 8 (the unbiased estimator
    # amplifies feature noise more in small minibatches); TF32 moves the features 17x less than bf16
    return Check("paired CKA", f"the study's paired pass (paired_cka) of {sizes.model} and a perturbed copy, "
                 f"{sizes.images} images in minibatches of {minibatch}, fp32 and bf16 autocast against the CPU in fp32",
                 work, {"fp32": Tolerance(atol=0.01, why="TF32 convolutions (bf16's error / 17)"),
                        "bf16": Tolerance(atol=0.05, why="bf16 autocast (0.005 measured in minibatches of 128)")},
                 "images", reference=reference)


def lowrank_check(context: Context) -> Check:
    from robustsig.extraction.calibrate import calibrate_linear_maps
    from robustsig.extraction.lowrank import low_rank_curve
    from robustsig.models.lowrank import low_rank_classifier

    sizes = context.sizes
    calibration = calibrate_linear_maps(context.classifier(), context.dataset, images=sizes.calibration_images,
                                        batch_size=sizes.batch, workers=sizes.workers, device="cpu", progress=False)
    # built from the CPU calibration on both sides, so both keep the same directions of every map
    low = low_rank_classifier(context.classifier(), calibration, 0.5, "importance")
    batch = torch.stack([context.image(i) for i in range(min(sizes.batch, sizes.images))])

    def work(device: torch.device) -> tuple[Values, float]:
        own = calibrate_linear_maps(context.classifier(), context.dataset, images=sizes.calibration_images,
                                    batch_size=sizes.batch, workers=sizes.workers, device=device, progress=False)
        paths = sorted(own.maps)
        with torch.inference_mode():
            logits = copy.deepcopy(low).to(device).eval()(batch.to(device))
        table = low_rank_curve(context.classifier(), calibration, {"id": context.dataset}, id_name="id",
                               fractions=(0.0, 0.5), batch_size=sizes.batch, workers=sizes.workers,
                               device=device, progress=False)
        return ({"singular_values": torch.cat([own.svds[p].s for p in paths]),
                 "importance": torch.cat([own.importance[p] for p in paths]), "logits": logits,
                 "accuracy": torch.as_tensor(table["accuracy"])},
                float(sizes.calibration_images + 2 * sizes.images + len(batch)))

    flips = 1 + sizes.images // 100
    return Check("low-rank", f"calibrate_linear_maps ({sizes.calibration_images} images), the 50% low-rank "
                 f"{sizes.model}'s logits, low_rank_curve at 0 and 0.5 on {sizes.images} images", work,
                 {"singular_values": Tolerance(rtol=1e-9, why="float64 SVDs of the same float32 weights"),
                  # the maps' inputs come out of TF32 convolutions on a GPU
                  "importance": Tolerance(rtol=0.03, why="mean |cos| of TF32-computed inputs"),
                  "logits": FP32_MODEL,
                  "accuracy": Tolerance(atol=flips / sizes.images, why=f"{flips} near-tied top-1 flip(s) (TF32)")},
                 "images")


def training_check(context: Context) -> Check:
    sizes = context.sizes
    data = write_images(context.work_dir / "train", sizes.train_images, seed=1)
    target = context.target
    processes = min(2, torch.cuda.device_count()) if target.type == "cuda" else 2
    precision = "bf16" if target.type == "cuda" else "fp32"
    runs = itertools.count()

    def arguments(device: torch.device, precision: str) -> list[str]:
        out = context.work_dir / f"finetune{next(runs)}"
        return ["finetune", TRAIN_SPEC, "--data", f"folder:{data}", "--out", str(out), "--json", "--new-head",
                "--image-size", "32", "--epochs", "1", "--batch-size", str(sizes.train_batch), "--lr", "1e-3",
                "--warmup-steps", "0", "--workers", "0", "--checkpoint-every", "0", "--device", device.type,
                "--precision", precision]

    def as_values(summary: dict) -> tuple[Values, float]:
        return ({"loss": torch.tensor([summary["final_loss"]]), "steps": torch.tensor([summary["steps"]])},
                float(summary["steps"] * sizes.train_batch))

    def job(device: torch.device) -> tuple[Values, float]:
        return as_values(torchrun(arguments(device, precision), processes))

    def one_process(device: torch.device) -> tuple[Values, float]:
        return as_values(in_process(arguments(device, "fp32")))

    backend = ("nccl" if target.type == "cuda" else "gloo") if processes > 1 else \
        "none: robustsig joins no process group for one process"
    loss = (Tolerance(rtol=0.05, why="bf16 autocast against fp32") if precision == "bf16" else
            Tolerance(rtol=1e-4, why="DDP's averaged half-batch gradients: the whole-batch gradient up to rounding"))
    return Check("training", f"torchrun --nproc_per_node {processes} -m robustsig finetune {TRAIN_SPEC} (backend "
                 f"{backend}), {sizes.train_images} images, 2 steps of {sizes.train_batch}, {precision}, against "
                 "one process on the CPU in fp32; times are the jobs' wall times, start-up included", job,
                 {"loss": loss, "steps": Tolerance(why="the same schedule")}, "images", reference=one_process,
                 rerun=False)


def torchrun(arguments: list[str], processes: int) -> dict:
    """``python -m torch.distributed.run ... -m robustsig ARGUMENTS`` (what a user types); rank 0's JSON summary."""
    with socket.socket() as s:  # a free port for the job's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = str(Path(rs.__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ROBUSTSIG_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                          "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "robustsig", *arguments],
                         env=env, capture_output=True, text=True, timeout=240)
    if job.returncode != 0:
        raise RuntimeError(f"the torchrun job failed (exit {job.returncode}): {job.stderr[-2000:]}")
    return json.loads(job.stdout)


def in_process(arguments: list[str]) -> dict:
    """``robustsig ARGUMENTS`` in this process; its JSON summary."""
    from robustsig.cli import main as cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised", category=UserWarning)  # TRAIN_SPEC's
        try:
            cli(arguments)
        except SystemExit as done:
            if done.code not in (0, None):
                raise RuntimeError(f"robustsig {' '.join(arguments)} exited with {done.code}") from None
    return json.loads(printed.getvalue())


def collective_check(context: Context) -> Check:
    """The process-group backend robustsig uses on a device (nccl on GPUs, gloo on CPUs): one rank in this
    process, an all-reduce of a known tensor. The torchrun job joins no group when it has one process only."""

    def work(device: torch.device) -> tuple[Values, float]:
        import torch.distributed as dist

        values = torch.arange(1 << 20, dtype=torch.float32, device=device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1, timeout=datetime.timedelta(seconds=60))
        try:
            dist.all_reduce(values)
            dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()
        finally:
            dist.destroy_process_group()
        return {"all_reduce": values}, float(values.numel())

    backend = "nccl" if context.target.type == "cuda" else "gloo"
    return Check(f"{backend} all-reduce", f"torch.distributed {backend} process group of 1 rank, all_reduce of "
                 "2^20 floats", work, {"all_reduce": Tolerance(why="a sum over one rank is exact")}, "floats")


def flop_bound(classifier: rs.Classifier, shape: tuple[int, ...], device: torch.device, precision: str,
               sizes: Sizes) -> list[str]:
    """Images/s of a bare forward loop on ``device`` (images of ``shape``) against the model's FLOP-bound limit."""
    from robustsig.models.lowrank import flops_per_image

    flops = flops_per_image(classifier, shape)
    model = classifier.to(device).eval()
    x = torch.randn(sizes.forward_batch, *shape, device=device)
    if device.type == "cuda":  # as rs.extract runs on GPUs
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    precision_context = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
    with torch.inference_mode(), precision_context:
        for _ in range(2 if device.type == "cuda" else 0):  # warm-up: cuDNN picks its algorithms
            model(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(sizes.forward_steps):
            model(x)
        synchronize(device)
    rate = sizes.forward_steps * sizes.forward_batch / (time.perf_counter() - start)
    line = (f"bare forward ({precision}, batch {sizes.forward_batch}, {shape[1]}x{shape[2]}): {rate:,.0f} images/s; "
            f"{flops / 1e9:.3g} GFLOP per image (torch.utils.flop_counter)")
    peak = peak_flops(device_name(device), precision, torch.backends.cudnn.allow_tf32) if device.type == "cuda" \
        else None
    if peak is None:
        return [line + f"; peak FLOP/s of {device_name(device)} unknown, so no FLOP-bound limit"]
    limit = peak[0] / flops
    return [line + f"; FLOP-bound limit {limit:,.0f} images/s at {peak[0] / 1e12:.0f} TFLOP/s {peak[1]}: "
            f"the bare loop reaches {rate / limit:.1%} of it"]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_properties(device).name if device.type == "cuda" else "the CPU"


def peak_flops(name: str, precision: str, tf32_convolutions: bool) -> tuple[float, str] | None:
    """The dense peak FLOP/s of the GPU called ``name`` for ``precision`` (``"fp32"`` or ``"bf16"``) and what it
    counts, or ``None`` when the GPU is not in :data:`PEAK_FLOPS`. fp32 convolutions run on TF32 tensor cores when
    cuDNN allows TF32 (torch's default), so their peak is TF32's."""
    for fragment, bf16, tf32, fp32 in PEAK_FLOPS:
        if fragment.lower() in name.lower():
            if precision == "bf16":
                return bf16, "bf16 dense"
            return (tf32, "TF32 dense (cuDNN's fp32 convolutions)") if tf32_convolutions else (fp32, "fp32")
    return None


CHECKS = (ap_check, permutation_check, pruning_check, cka_check, paired_cka_check, lowrank_check,
          extraction_check("fp32"), extraction_check("bf16"), training_check, collective_check)
"""Every path, in the order run: each builds its :class:`Check` from the shared :class:`Context`."""


def header(target: torch.device) -> list[str]:
    lines = [f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.get_num_threads()} CPU threads"]
    if target.type == "cuda":
        properties = torch.cuda.get_device_properties(target)
        lines.append(f"{target}: {properties.name}, compute capability {properties.major}.{properties.minor}, "
                     f"{properties.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s), cuDNN "
                     f"{torch.backends.cudnn.version()}")
        lines.append(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN convolutions "
                     f"{torch.backends.cudnn.allow_tf32} (torch's defaults: False, True)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the self-check: CPU against CPU)")
    parser.add_argument("--sizes", choices=("tiny", "full"), default=None,
                        help="tiny (the self-check's) or full (a GPU's); default: by device")
    parser.add_argument("--only", default="", help="run only the checks whose function name contains one of these "
                        "comma-separated fragments (ap, permutation, pruning, cka, lowrank, extraction, training, "
                        "collective)")
    args = parser.parse_args(argv)
    try:
        target = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if target.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU here, so "
              "there is nothing to check; run it on a GPU machine (python -m benchmarks.gpu_check --device cpu "
              "runs the same code CPU against CPU)")
        return 0
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    sizes = {"tiny": TINY, "full": FULL}[args.sizes or ("full" if target.type == "cuda" else "tiny")]
    wanted = [fragment.strip() for fragment in args.only.split(",") if fragment.strip()]
    begin = time.perf_counter()
    print("\n".join(header(target)), flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="robustsig-gpu-check-") as folder:
        context = Context(sizes, target, Path(folder))
        for factory in CHECKS:
            if wanted and not any(fragment in factory.__name__ for fragment in wanted):
                continue
            try:
                check = factory(context)
            except Exception as error:  # its inputs could not be made: the path fails, the others run
                outcome = Outcome(factory.__name__)
                outcome.fail(error)
            else:
                print(f"== {check.name}: {check.what}", flush=True)
                outcome = run_check(check, target)
            print("\n".join(f"   {line}" for line in outcome.lines), flush=True)
            outcomes.append(outcome)
    print(f"verdicts ({target.type} against the CPU, {time.perf_counter() - begin:.0f} s in all):")
    for outcome in outcomes:
        print(f"  {outcome.summary()}")
    return 0 if outcomes and all(outcome.verdict == "ok" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
