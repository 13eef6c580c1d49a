"""The demo's finetuned models: a real ImageNet model (MobileNetV2, SqueezeNet 1.1) finetuned on the demo's training
split with robustsig's own training loop, through the training class map (the whole 1,000-way head is kept and
trained with the set likelihood, :mod:`robustsig.train.objective`).

The training photos are packaged photos of six scenes (a cat, an espresso, a motorcycle, a palace, a rocket, a
tripod; :data:`robustsig.demo.sources.DEMO_CLASSES`): none of them is an evaluated photo (the in-distribution and
shifted sets are foolbox's ImageNet photos) or a concept photo. A finetuned model is therefore tested on photos it
never saw, of classes it was not trained on: the finetune is a narrow downstream task, and its effect on the
ImageNet photos (forgetting, and how the shifts suffer from it) is what the demo's pool measures.

The recipe is the paper's D.1 (AdamW, weight decay 0.1, cosine schedule with linear warm-up, gradient norm clipped
at 1, random resized crops of 90-100% of the area, no flip, no label smoothing) shortened to fit the demo's time
on 2 CPU cores: 2 epochs of the 120 training crops in batches of 16 (16 steps), 3 warm-up steps, and a rate of
1e-4. D.1's rate (3e-5 for batches of 256; 7.5e-6 scaled to batches of 16 by the square-root rule) barely moves a
model in 16 steps: measured at 1e-5, SqueezeNet's accuracy on every demo set was unchanged and MobileNetV2's id
accuracy moved by 3 points, so the finetuned models and the Wise-FT models between them would be near copies of
the pretrained ones. fp32 on every device, so that a GPU run finetunes the same model.

The result is cached in its output folder: a rerun resumes an interrupted run from its checkpoint, and a finished
run returns at once (the loop loads its final checkpoint and takes no step). A folder trained on other demo data
(another size or seed), from another model or with another recipe is trained again.

>>> result = finetune_demo_model(build_demo_data("robustsig-demo/data"), "robustsig-demo/finetune/mobilenet_v2",
...                              base="bundled:mobilenet_v2")                                      # doctest: +SKIP
>>> result.spec                                                                                    # doctest: +SKIP
'bundled:mobilenet_v2@/.../robustsig-demo/finetune/mobilenet_v2/model.safetensors'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from robustsig.data.registry import open_dataset
from robustsig.demo.build import TRAIN_SET, DemoData
from robustsig.errors import InputError
from robustsig.train.loop import CHECKPOINT_NAME, MODEL_NAME, TrainResult, checkpoint_matches, train_classifier
from robustsig.train.recipes import Recipe, load_recipe
from robustsig.train.start import finetune_start

DEMO_RECIPE: Recipe = load_recipe("finetune", name="demo-finetune", epochs=2, batch_size=16, lr=1e-4,
                                  warmup_steps=3, precision="fp32")
"""D.1 shortened for the demo (see the module notes)."""
DATA_MARK = "demo_data.txt"
"""The digest of the demo data a finetune folder was trained on."""
_OWN_FILES = frozenset({DATA_MARK, CHECKPOINT_NAME, MODEL_NAME, "train_log.csv", "recipe.yaml"})


@dataclass(frozen=True)
class DemoFinetune:
    """The demo's finetuned model.

    Attributes:
        model_path: its ``model.safetensors``.
        spec: the spec that loads it (``bundled:mobilenet_v2@PATH``).
        recipe: the recipe it was trained with.
        result: what the training loop reports (steps, per-epoch loss and accuracy).
        reused: whether the folder already held the finished run (no training step was taken).
    """

    model_path: Path
    spec: str
    recipe: Recipe
    result: TrainResult
    reused: bool


def demo_recipe(data: DemoData) -> Recipe:
    """:data:`DEMO_RECIPE`, its batch cut to the training split's size when that is smaller (the test sizes)."""
    images = data.counts[TRAIN_SET]
    return DEMO_RECIPE if images >= DEMO_RECIPE.batch_size else load_recipe(DEMO_RECIPE, batch_size=images)


def finetune_demo_model(data: DemoData, out_dir: str | os.PathLike, *, base: str, device: str | None = "cpu",
                        workers: int = 0, recipe: Recipe | None = None) -> DemoFinetune:
    """Finetune a real ImageNet model on the demo's training split (or reuse the finished run in ``out_dir``).

    Args:
        data: the built demo data.
        base: the spec of the model to finetune (``bundled:mobilenet_v2``).
        out_dir: the training folder (``model.safetensors``, ``checkpoint.pt``, ``train_log.csv``, ``recipe.yaml``).
        device: where to train (``cpu``, ``cuda``, ``None``/``"auto"``).
        workers: data-loading processes (the result does not depend on it; 0: in the main process, the fastest
            for the demo's 120 images).
        recipe: the training recipe (default: :func:`demo_recipe`).

    Returns:
        The :class:`DemoFinetune`.

    Raises:
        InputError: ``out_dir`` exists and holds something else than a training run.
    """
    recipe = demo_recipe(data) if recipe is None else recipe
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(p.name not in _OWN_FILES and not p.name.startswith(".")
                                                  for p in out.iterdir())):
        raise InputError(f"{out} holds other files than a demo finetune ({', '.join(sorted(_OWN_FILES))}); give a new "
                         "or empty folder")
    dataset = open_dataset("folder", data.train_root, class_map=data.train_class_map_path)
    clf = finetune_start(base, dataset, device=device, seed=recipe.seed)
    mark = out / DATA_MARK
    same_data = mark.is_file() and mark.read_text().strip() == f"{data.digest} {base}"
    if not (same_data and checkpoint_matches(out, clf, dataset, recipe)):
        for stale in (CHECKPOINT_NAME, MODEL_NAME):  # never resume a run made on other data
            (out / stale).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        mark.write_text(f"{data.digest} {base}\n")
    result = train_classifier(clf, dataset, recipe, out, device=device, workers=workers, checkpoint_every=10)
    model_path = out / MODEL_NAME  # a bundled model records its architecture: the loop always writes it
    reused = result.resumed_from_step is not None and result.resumed_from_step == result.steps
    return DemoFinetune(model_path, f"{base}@{model_path}", recipe, result, reused)

