"""Class-map-aware finetuning: the set likelihood against a direct computation (and plain cross-entropy when every
set is one id, label smoothing included), its gradient against the closed form, the training accuracy counted
with the scoring rule, finetune_start keeping an ImageNet head for a class-mapped set (and refusing what cannot
work), resumes that stay bit-exact with a class map, and a few steps of the real MobileNetV2 on the demo's
training photos raising the set likelihood of those photos."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import robustsig as rs
import robustsig.train.objective as objective_module
from robustsig.cli import main
from robustsig.data.base import image_loader
from robustsig.metrics.scoring import top1_correct
from robustsig.models.checkpoint import save_classifier
from robustsig.train.loop import train_classifier
from robustsig.train.objective import ClassSets, TrainingObjective, set_cross_entropy
from robustsig.train.recipes import load_recipe
from robustsig.train.start import finetune_start, scratch_start

from demo_helpers import small_demo  # noqa: F401 (a fixture)
from train_helpers import tiny_classifier, write_colour_folder

pytestmark = pytest.mark.filterwarnings("ignore:this classifier records no architecture",
                                        "ignore:.*randomly initialised")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _random_map(generator: torch.Generator, num_logits: int, sizes: list[int]) -> list[list[int]]:
    """Disjoint sets of the given sizes, drawn from a permutation of the logits."""
    order = torch.randperm(num_logits, generator=generator).tolist()
    sets, start = [], 0
    for size in sizes:
        sets.append(order[start:start + size])
        start += size
    return sets


def _direct(logits: torch.Tensor, labels: torch.Tensor, class_map: list[list[int]]) -> torch.Tensor:
    """-log of the softmax mass on each row's set, from probabilities in float64 (the definition itself)."""
    probabilities = logits.double().softmax(dim=1)
    mass = torch.stack([probabilities[n, class_map[int(y)]].sum() for n, y in enumerate(labels)])
    return -mass.log()


def test_set_likelihood_equals_its_definition():
    generator = torch.Generator().manual_seed(0)
    class_map = _random_map(generator, 50, [1, 3, 7, 2, 12])
    logits = torch.randn(64, 50, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (64,), generator=generator)
    expected = _direct(logits, labels, class_map)
    torch.testing.assert_close(set_cross_entropy(logits, labels, class_map), expected.mean(), rtol=1e-12, atol=0)
    # large logits: the log-sum-exp form stays finite where the probabilities underflow
    far = torch.zeros(2, 50)
    far[:, class_map[0][0]] = 200.0
    loss = set_cross_entropy(far, torch.tensor([1, 0]), class_map)
    assert torch.isfinite(loss) and 99.0 < float(loss) < 101.0  # ~200/2: row 0's set is 200 below the max


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_one_id_per_class_is_plain_cross_entropy(smoothing):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 10, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)
    permutation = torch.randperm(10, generator=generator).tolist()
    singletons = [[i] for i in permutation]  # class k is logit permutation[k]
    expected = F.cross_entropy(logits[:, permutation], labels, label_smoothing=smoothing)
    torch.testing.assert_close(set_cross_entropy(logits, labels, singletons, smoothing), expected)
    identity = TrainingObjective(10, [[i] for i in range(10)], label_smoothing=smoothing)
    torch.testing.assert_close(identity.loss(logits, labels), F.cross_entropy(logits, labels,
                                                                              label_smoothing=smoothing))


def test_label_smoothing_spreads_over_the_maps_classes():
    generator = torch.Generator().manual_seed(2)
    class_map = _random_map(generator, 30, [4, 1, 6])  # 19 logits belong to no class
    logits = torch.randn(16, 30, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (16,), generator=generator)
    every = torch.stack([_direct(logits, torch.full((16,), k), class_map) for k in range(3)], dim=1)
    expected = 0.8 * _direct(logits, labels, class_map) + 0.2 * every.mean(dim=1)
    torch.testing.assert_close(set_cross_entropy(logits, labels, class_map, 0.2), expected.mean(), rtol=1e-12,
                               atol=0)


def test_gradient_is_softmax_minus_the_sets_renormalised_softmax():
    generator = torch.Generator().manual_seed(3)
    class_map = _random_map(generator, 20, [3, 5, 2])
    logits = torch.randn(8, 20, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (8,), generator=generator)
    set_cross_entropy(logits, labels, class_map).backward()
    p = logits.detach().softmax(dim=1)
    member = torch.zeros(8, 20, dtype=torch.bool)
    for n, y in enumerate(labels.tolist()):
        member[n, class_map[y]] = True
    q = torch.where(member, p, torch.zeros_like(p))
    q = q / q.sum(dim=1, keepdim=True)
    torch.testing.assert_close(logits.grad, (p - q) / 8, rtol=1e-10, atol=1e-14)
    # every logit outside the row's set is pushed down, even those of no class: the whole head trains
    assert bool((logits.grad[~member] > 0).all())


def test_training_accuracy_is_the_scoring_rule():
    generator = torch.Generator().manual_seed(4)
    class_map = _random_map(generator, 40, [2, 6, 1, 3])
    logits = torch.randn(200, 40, generator=generator)
    labels = torch.randint(0, 4, (200,), generator=generator)
    expected = top1_correct(logits, labels, class_map=class_map)
    assert 0 < int(expected.sum()) < 200
    assert int(TrainingObjective(40, class_map).correct(logits, labels)) == int(expected.sum())
    assert int(TrainingObjective(40).correct(logits, labels)) == int((logits.argmax(1) == labels).sum())


def test_bad_inputs_are_refused():
    with pytest.raises(rs.InputError, match="class numbers 0..1; got 0..2"):
        set_cross_entropy(torch.zeros(3, 5), torch.tensor([0, 1, 2]), [[0], [1, 2]])
    with pytest.raises(rs.InputError, match=r"logit indices in 0..4, got 1..7"):
        ClassSets([[1], [7]], 5)
    with pytest.raises(rs.InputError, match="label_smoothing must be in"):
        set_cross_entropy(torch.zeros(1, 5), torch.tensor([0]), [[0]], 1.0)
    with pytest.raises(rs.InputError, match="N x C logits and N labels"):
        set_cross_entropy(torch.zeros(2, 5), torch.tensor([0]), [[0]])


def test_objective_module_examples_run():
    result = doctest.testmod(objective_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


# --- the training loop with a class map ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mapped_colours(tmp_path_factory) -> tuple[Path, Path]:
    """The colour folder with a class map onto a head of 6 outputs: blue -> {0, 4}, green -> {2}, red -> {5}."""
    root = write_colour_folder(tmp_path_factory.mktemp("mapped"))
    class_map = root.parent / "map.json"
    class_map.write_text(json.dumps({"blue": [0, 4], "green": [2], "red": [5]}))
    return root, class_map


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _timeless(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in history]


def test_loop_trains_a_mapped_set_and_resumes_bit_exactly(mapped_colours, tmp_path):
    root, class_map = mapped_colours
    dataset = rs.open_dataset("folder", root, class_map=class_map)
    recipe = load_recipe("finetune", epochs=2, batch_size=4, lr=0.05, warmup_steps=2)
    reference = tiny_classifier(num_classes=6)
    full = train_classifier(reference, dataset, recipe, tmp_path / "full", workers=0, checkpoint_every=0)
    assert full.steps == 12 and full.history[1]["loss"] < full.history[0]["loss"]
    resumed = tiny_classifier(num_classes=6)

    class Stop(Exception):
        pass

    def stop_at(step: int) -> None:
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        train_classifier(resumed, dataset, recipe, tmp_path / "killed", workers=0, checkpoint_every=3,
                         on_step=stop_at)
    again = tiny_classifier(num_classes=6, seed=9)
    result = train_classifier(again, dataset, recipe, tmp_path / "killed", workers=0, checkpoint_every=3)
    assert result.resumed_from_step == 6 and _timeless(result.history) == _timeless(full.history)
    assert _states_equal(again.state_dict(), reference.state_dict())
    # a finished run started again returns its weights without taking a step
    def no_step(step: int) -> None:
        raise AssertionError(f"step {step} taken by a finished run")

    finished = tiny_classifier(num_classes=6, seed=5)
    done = train_classifier(finished, dataset, recipe, tmp_path / "killed", workers=0, on_step=no_step)
    assert done.steps == 12 and _states_equal(finished.state_dict(), reference.state_dict())
    # another class map is another run: its checkpoint is refused
    other_map = tmp_path / "other.json"
    other_map.write_text(json.dumps({"blue": [0], "green": [2, 3], "red": [5]}))
    other = rs.open_dataset("folder", root, class_map=other_map)
    with pytest.raises(rs.InputError, match="checkpoint of another run.*class_map"):
        train_classifier(tiny_classifier(num_classes=6), other, recipe, tmp_path / "full", workers=0)


def test_a_map_beyond_the_head_is_refused_before_training(mapped_colours, tmp_path):
    root, class_map = mapped_colours
    dataset = rs.open_dataset("folder", root, class_map=class_map)
    with pytest.raises(rs.InputError, match=r"logit ids \[4, 5\] beyond the head's 4 outputs"):
        train_classifier(tiny_classifier(num_classes=4), dataset, load_recipe("finetune", batch_size=4), tmp_path)


def test_finetune_start_keeps_the_imagenet_head_for_a_class_map(mapped_colours, tmp_path):
    root, class_map = mapped_colours
    mapped = rs.open_dataset("folder", root, class_map=class_map)
    clf = finetune_start("timm:test_convnext", mapped, device="cpu")
    assert clf.head.out_features == 1000 and len(clf.classnames) == 1000  # no --new-head needed
    with pytest.raises(rs.InputError, match="--new-head would replace"):
        finetune_start("timm:test_convnext", mapped, device="cpu", new_head=True)
    three = finetune_start("timm:test_convnext", rs.open_dataset("folder", root), device="cpu", new_head=True)
    save_classifier(three, tmp_path / "three.safetensors")
    with pytest.raises(rs.InputError, match=r"naming head outputs \[4, 5\].*a head of 3 outputs"):
        finetune_start(f"timm:test_convnext@{tmp_path / 'three.safetensors'}", mapped, device="cpu")
    scratch = scratch_start("timm:test_convnext", mapped, device="cpu")
    assert scratch.head.out_features == 1000  # the map's ids are ImageNet-1k indices


def _set_log_likelihood(clf, root: Path, class_map: Path) -> float:
    dataset = rs.open_dataset("folder", root, class_map=class_map, transform=clf.preprocess)
    total, count = 0.0, 0
    clf.eval()
    with torch.inference_mode():
        for _, images, labels, _ in image_loader(dataset, batch_size=16, num_workers=0):
            total -= float(set_cross_entropy(clf(images), labels, dataset.class_map)) * len(labels)
            count += len(labels)
    return total / count


def test_real_mobilenet_finetuned_on_the_demo_photos_raises_their_set_likelihood(small_demo, tmp_path, capsys):
    root, class_map = small_demo.train_root, small_demo.train_class_map_path
    before = _set_log_likelihood(rs.load_classifier("bundled:mobilenet_v2"), root, class_map)
    out = tmp_path / "ft"
    try:
        main(["finetune", "bundled:mobilenet_v2", "--data", f"folder:{root}", "-O", f"class_map={class_map}",
              "--out", str(out), "--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "--warmup-steps", "1",
              "--workers", "0", "--device", "cpu", "--json"])
    except SystemExit as done:
        assert done.code in (0, None), capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["spec"] == f"bundled:mobilenet_v2@{(out / 'model.safetensors').resolve()}"
    assert summary["steps"] == len(rs.open_dataset("folder", root)) // 8
    tuned = rs.load_classifier(summary["spec"])
    assert tuned.head.out_features == 1000 and tuned.classnames == rs.load_classifier("bundled:mobilenet_v2").classnames
    after = _set_log_likelihood(tuned, root, class_map)
    assert after > before + 0.1, (before, after)


def test_the_demo_finetune_is_reused_only_for_the_same_data(tmp_path):
    from robustsig.demo import build_demo_data, finetune_demo_model

    base = "bundled:squeezenet1_1"
    first_data = build_demo_data(tmp_path / "data0", size="tiny", seed=0)
    first = finetune_demo_model(first_data, tmp_path / "ft", base=base)
    assert not first.reused and first.result.steps == 2 and first.recipe.batch_size == 12  # the tiny split: 12 images
    assert first.spec == f"{base}@{tmp_path / 'ft' / 'model.safetensors'}"
    again = finetune_demo_model(first_data, tmp_path / "ft", base=base)
    assert again.reused and again.result.resumed_from_step == 2
    other_data = build_demo_data(tmp_path / "data1", size="tiny", seed=1)  # same file names, other crops
    other = finetune_demo_model(other_data, tmp_path / "ft", base=base)
    assert not other.reused and other.result.resumed_from_step is None
    (tmp_path / "ft" / "notes.txt").write_text("mine")
    with pytest.raises(rs.InputError, match="holds other files than a demo finetune"):
        finetune_demo_model(other_data, tmp_path / "ft", base=base)


def test_wiseft_checkpoints_are_the_interpolation_and_are_rewritten_only_when_an_end_changes(tmp_path, monkeypatch):
    from robustsig.demo.interpolations import wiseft_checkpoints

    zero_shot = rs.load_classifier("bundled:squeezenet1_1")
    tuned = rs.load_classifier("bundled:squeezenet1_1")
    with torch.no_grad():
        tuned.head.weight.mul_(0.5)
    rs.save_classifier(tuned, tmp_path / "ft.safetensors")
    paths = wiseft_checkpoints("bundled:squeezenet1_1", tmp_path / "ft.safetensors", [0.25], tmp_path / "w",
                               name="sq")
    assert paths == {0.25: tmp_path / "w" / "sq-wiseft-0.25.safetensors"}
    mixed = rs.load_classifier(f"bundled:squeezenet1_1@{paths[0.25]}")
    expected = rs.interpolate(zero_shot, tuned, 0.25)
    assert mixed.fingerprint() == expected.fingerprint() and torch.equal(mixed.W, 0.875 * zero_shot.W)
    stamp = paths[0.25].stat().st_mtime_ns
    with monkeypatch.context() as patched:  # a rerun reads the files' metadata and loads no model

        def no_load(*args, **kwargs):
            raise AssertionError("a model was loaded")

        patched.setattr("robustsig.models.factory.load_classifier", no_load)
        assert wiseft_checkpoints("bundled:squeezenet1_1", tmp_path / "ft.safetensors", [0.25], tmp_path / "w",
                                  name="sq") == paths
    assert paths[0.25].stat().st_mtime_ns == stamp
    with torch.no_grad():
        tuned.head.weight.mul_(0.5)
    rs.save_classifier(tuned, tmp_path / "ft.safetensors")  # another finetune: the checkpoint is written again
    wiseft_checkpoints("bundled:squeezenet1_1", tmp_path / "ft.safetensors", [0.25], tmp_path / "w", name="sq")
    assert torch.equal(rs.load_classifier(f"bundled:squeezenet1_1@{paths[0.25]}").W,
                       rs.interpolate(zero_shot, tuned, 0.25).W)
