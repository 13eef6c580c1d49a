"""Training input speed: the two choices of :mod:`robustsig.train` that sit on the data path, each against the naive way.

1. uint8 batches out of the workers, normalised where the model runs (``TrainingTransform.on_device``), against
   ``ToTensor + Normalize`` in the workers (float32 batches, 4x the bytes to ship between processes). Both: a
   DataLoader with 2 persistent, warmed-up workers, random resized crops (224 px, D.2's augmentation) of 500x375
   JPEGs, batches of 32; the uint8 side also pays its normalisation in the main process here (on a GPU it is
   free). Target: >= 1.0x (never slower).
2. Per-sample seeded augmentation (``SeededSamples``: torch/random/numpy generators seeded from (seed, epoch,
   index) around each image, what makes resumes exact) against the same transform on the workers' unseeded
   generators; both through the same DataLoader (2 workers, uint8 batches of 32). Target: >= 0.95x (the seeding
   is noise next to a JPEG decode).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from benchmarks._timing import report, side_by_side
from benchmarks.bench_data import jpeg_folder
from robustsig.data.base import IndexedDataset, collate_skip_corrupt
from robustsig.data.registry import open_dataset
from robustsig.train.data import SeededSamples
from robustsig.train.recipes import load_recipe
from robustsig.train.transforms import training_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def run() -> None:
    folder = jpeg_folder()
    eval_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    split = training_transform(eval_tf, load_recipe("supervised"))
    in_workers = T.Compose([*split.per_image.transforms[:-1], T.ToTensor(), T.Normalize(MEAN, STD)])
    count = len(open_dataset("folder", folder).samples)

    def loader(transform) -> DataLoader:
        return DataLoader(open_dataset("folder", folder, transform=transform), batch_size=32, num_workers=2,
                          persistent_workers=True)

    uint8_loader, float_loader = loader(split.per_image), loader(in_workers)

    def uint8_batches() -> None:
        for images, _ in uint8_loader:
            split.on_device(images)

    def float_batches() -> None:
        for _ in float_loader:
            pass

    keys = [(0, index) for index in range(count)]
    seeded = DataLoader(SeededSamples(open_dataset("folder", folder, transform=split.per_image), seed=0),
                        batch_size=32, sampler=keys, num_workers=2, persistent_workers=True,
                        collate_fn=collate_skip_corrupt)
    unseeded = DataLoader(IndexedDataset(open_dataset("folder", folder, transform=split.per_image)), batch_size=32,
                          num_workers=2, persistent_workers=True, collate_fn=collate_skip_corrupt)

    def with_seeds() -> None:
        for _ in seeded:
            pass

    def without_seeds() -> None:
        for _ in unseeded:
            pass

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shipping = side_by_side({"uint8 + normalise on device": uint8_batches,
                                 "float32 normalised in workers": float_batches}, repeats=7, warmup=1)
        seeding = side_by_side({"seeded per sample": with_seeds, "global generators": without_seeds}, repeats=7,
                               warmup=1)
    finally:
        torch.set_num_threads(threads)
    for name, seconds in {**shipping, **seeding}.items():
        print(f"  {name}: {count / seconds:.0f} images/s (median over {count} JPEGs)", flush=True)
    print("  load average during the run: %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    report("training batches, uint8 vs float32 out of 2 workers (speed-up)", shipping,
           fast="uint8 + normalise on device", slow="float32 normalised in workers", target=1.0)
    report("per-sample seeded augmentation vs global generators (speed ratio)", seeding, fast="seeded per sample",
           slow="global generators", target=0.95)


if __name__ == "__main__":
    run()
