"""The low-rank encoder's passes against one plain forward pass over the same images.

MobileNetV2 (the packaged ImageNet weights when installed) at 64x64 on CPU, 256 pre-loaded images, batches of 64:

1. the calibration pass (``rs.calibrate_linear_maps``: every 1x1 convolution's inputs streamed into an eq. 4
   accumulator through forward pre-hooks, then the SVDs) over a bare ``model(x)`` loop;
2. the evaluation of one budget (half of every map's rank, importance order: building the low-rank model and
   scoring it with the dataset's rule) over the same bare loop;
3. a bare loop of that low-rank model over the original's (what the budget buys at inference time; dense layers
   are kept where two factors would be larger).
"""

from __future__ import annotations

import torch

from benchmarks._timing import report, side_by_side
from benchmarks.bench_extract import BATCH, RESOLUTION, Preloaded, mobilenet
from robustsig.extraction.calibrate import accuracies, calibrate_linear_maps
from robustsig.models.lowrank import low_rank_classifier

IMAGES = 256
FRACTION = 0.5


def run() -> None:
    torch.manual_seed(0)
    clf = mobilenet().eval()
    images = torch.randn(IMAGES, 3, RESOLUTION, RESOLUTION)
    dataset = Preloaded(images)
    batches = images.split(BATCH)
    calibration = calibrate_linear_maps(clf, dataset, batch_size=BATCH, progress=False)
    low = low_rank_classifier(clf, calibration, FRACTION, "importance")

    def plain(model=clf):
        with torch.inference_mode():
            for x in batches:
                model(x)

    def calibrate():
        calibrate_linear_maps(clf, dataset, batch_size=BATCH, progress=False)

    def evaluate():
        model = low_rank_classifier(clf, calibration, FRACTION, "importance")
        accuracies({"low": model}, dataset, batch_size=BATCH, progress=False)

    medians = side_by_side({"plain forward": plain, "calibration": calibrate, "one budget": evaluate}, repeats=3)
    report(f"calibration pass, {len(calibration.maps)} maps, {IMAGES} images", medians, "plain forward",
           "calibration")
    report(f"one budget's evaluation ({FRACTION:g} of every rank pruned)", medians, "plain forward", "one budget")
    speed = side_by_side({"original": plain, "low-rank": lambda: plain(low)}, repeats=5)
    share = low.meta["lowrank"]["parameters"] / low.meta["lowrank"]["parameters_original"]
    report(f"forward of the low-rank model ({100 * share:.0f}% of the parameters)", speed, "low-rank", "original")
