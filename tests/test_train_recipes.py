"""Recipes as data (D.1/D.2 values, overrides, validation errors), the learning-rate schedule against wise-ft's
formula, Wise-FT alpha grids, training transforms read from each family's preprocess, the per-rank batch split,
and the sampler/augmentation seeding that makes batches independent of ranks, workers and resume points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms as T

import robustsig as rs
from robustsig.distributed import World
from robustsig.train.data import EpochSampler, SeededSamples, derived_seed, per_rank_batch
from robustsig.train.recipes import FINETUNE, SUPERVISED, load_recipe
from robustsig.train.schedule import learning_rate
from robustsig.train.sweep import alpha_file_name, parse_alphas
from robustsig.train.transforms import preprocess_settings, training_transform


def test_paper_recipes():
    assert (FINETUNE.epochs, FINETUNE.batch_size, FINETUNE.lr, FINETUNE.weight_decay, FINETUNE.schedule,
            FINETUNE.warmup_steps) == (10, 256, 3e-5, 0.1, "cosine", 500)
    assert (FINETUNE.grad_clip, FINETUNE.crop_scale, FINETUNE.hflip, FINETUNE.label_smoothing) == (1.0, (0.9, 1.0),
                                                                                                  False, 0.0)
    assert (SUPERVISED.epochs, SUPERVISED.batch_size, SUPERVISED.lr, SUPERVISED.weight_decay, SUPERVISED.schedule,
            SUPERVISED.lr_milestones, SUPERVISED.lr_gamma, SUPERVISED.warmup_steps) == (90, 1024, 1e-3, 1e-2, "step",
                                                                                      (30, 60), 0.1, 5000)
    assert (SUPERVISED.crop_scale, SUPERVISED.hflip, SUPERVISED.label_smoothing, SUPERVISED.grad_clip) == (
        (0.08, 1.0), True, 0.1, None)
    # D.1 trains wise-ft's head: the zero-shot head with a trainable bias started at 0
    assert (SUPERVISED.head, FINETUNE.head) == ("linear", "wiseft")
    assert rs.load_recipe("supervised") == SUPERVISED and rs.Recipe is type(FINETUNE)


def test_yaml_then_keyword_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("base: supervised\nlr: 3e-4\nepochs: 4\nlr_milestones: [2, 3]\ncrop_scale: null\n"
                    "grad_clip: 2\nhflip: false\nhead: normalized-linear\n")
    recipe = load_recipe("finetune", path, epochs=5)
    assert recipe.head == "normalized-linear" and load_recipe("supervised", head="null").head is None
    # D.1's bias-free option, and a D.1 recipe.yaml written before its head had a bias (head: null), read back
    assert load_recipe("finetune", head="normalized-linear").head == "normalized-linear"
    old = tmp_path / "old.yaml"
    old.write_text(load_recipe("finetune").to_yaml().replace("head: wiseft", "head: null"))
    assert load_recipe("finetune", old).head is None
    assert recipe.name == "supervised" and recipe.lr == 3e-4 and recipe.epochs == 5  # keyword beats file
    assert recipe.lr_milestones == (2, 3) and recipe.crop_scale is None and recipe.grad_clip == 2.0
    assert recipe.batch_size == 1024 and recipe.hflip is False
    assert load_recipe("finetune", grad_clip="none", crop_scale="0.5,1").crop_scale == (0.5, 1.0)
    assert load_recipe("finetune", grad_clip=None).grad_clip is None
    # the YAML a recipe writes (recipe.yaml next to a run) reads back to the same recipe
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert load_recipe("finetune", again) == recipe


def test_every_problem_is_reported_with_its_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 0\nlr: -1\nlable_smoothing: 0.1\n")
    with pytest.raises(rs.InputError,
                       match=r"lable_smoothing: unknown recipe key \(did you mean 'label_smoothing'\?\)"):
        load_recipe("finetune", path)
    path.write_text("epochs: 0\nlr: -1\nlabel_smoothing: 1.5\nschedule: linear\ncrop_scale: [0.9, 0.1]\n")
    with pytest.raises(rs.InputError) as info:
        load_recipe("finetune", path)
    message = str(info.value)
    assert f"{path} is not a valid training recipe" in message
    assert "schedule: expected one of cosine, step, constant; got 'linear'" in message
    path.write_text("epochs: 0\nlr: -1\nlabel_smoothing: 1.5\ncrop_scale: [0.9, 0.1]\n")
    with pytest.raises(rs.InputError) as info:
        load_recipe("finetune", path)
    message = str(info.value)
    assert "(4 problems)" in message
    for expected in ("epochs: expected an integer >= 1; got 0", "lr: expected a learning rate > 0; got -1.0",
                     "label_smoothing: expected a number in [0, 1); got 1.5",
                     "crop_scale: expected [min, max] with 0 < min <= max <= 1"):
        assert expected in message


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 2}, r"lr_milestones: expected strictly increasing epochs between 1 and epochs - 1 = 1"),
    ({"schedule": "step"}, r"the 'step' schedule needs at least one milestone"),
    ({"batch_size": "many"}, r"batch_size: expected an integer; got 'many'"),
    ({"hflip": "maybe"}, r"hflip: expected true or false"),
    ({"precision": "fp8"}, r"precision: expected one of auto, fp32, bf16, fp16"),
    ({"epochs": True}, r"epochs: expected an integer, not a boolean"),
    ({"betas": [0.9]}, r"betas: expected two numbers"),
    ({"head": "cosine"}, r"head: expected one of linear, normalized-linear, wiseft, or null; got 'cosine'"),
])
def test_bad_values_name_the_key(overrides, message):
    base = "supervised" if "epochs" in overrides and overrides["epochs"] == 2 else "finetune"
    with pytest.raises(rs.InputError, match=message):
        load_recipe(base, **overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(rs.InputError, match="not found"):
        load_recipe("finetune", tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1\n")
    with pytest.raises(rs.InputError, match=r"is not valid YAML \(line 2"):
        load_recipe("finetune", broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- lr\n")
    with pytest.raises(rs.InputError, match="holds a list; expected a mapping"):
        load_recipe("finetune", listing)
    with pytest.raises(rs.InputError, match="unknown base recipe 'imagenet'"):
        load_recipe("imagenet")
    with pytest.raises(rs.InputError, match="name: expected a non-empty name"):
        load_recipe("finetune", name=" ")


def test_cosine_schedule_matches_wise_ft():
    recipe = load_recipe("finetune", epochs=2, warmup_steps=5)
    steps_per_epoch, total = 10, 20

    def wise_ft(step):  # mlfoundations/wise-ft src/models/utils.py cosine_lr
        if step < 5:
            return 3e-5 * (step + 1) / 5
        return 0.5 * (1 + np.cos(np.pi * (step - 5) / (total - 5))) * 3e-5

    for step in range(total):
        assert learning_rate(recipe, step, steps_per_epoch) == pytest.approx(wise_ft(step), rel=1e-12, abs=1e-20)
    assert learning_rate(recipe, 4, steps_per_epoch) == pytest.approx(3e-5) and learning_rate(recipe, 5, 10) == 3e-5


def test_step_schedule_with_warmup():
    recipe = load_recipe("supervised", epochs=3, lr_milestones=[1, 2], warmup_steps=4)
    rates = [learning_rate(recipe, step, steps_per_epoch=5) for step in range(15)]
    assert rates[:4] == pytest.approx([1e-3 * (s + 1) / 4 for s in range(4)])
    assert rates[4] == 1e-3 and rates[5:10] == pytest.approx([1e-4] * 5) and rates[10:] == pytest.approx([1e-5] * 5)
    constant = load_recipe("finetune", schedule="constant", warmup_steps=0)
    assert {learning_rate(constant, s, 3) for s in range(30)} == {3e-5}


def test_alpha_grids():
    assert parse_alphas("0:1:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert parse_alphas(" 0.2 : 0.5 : 0.1 ") == [0.2, 0.3, 0.4, 0.5]
    assert parse_alphas("0, 0.5,1") == [0.0, 0.5, 1.0] and parse_alphas("0.75") == [0.75]
    assert parse_alphas("-0.5:1.5:1") == [-0.5, 0.5, 1.5]
    assert [alpha_file_name(a) for a in parse_alphas("0:1:0.5")] == [
        "alpha_0.0.safetensors", "alpha_0.5.safetensors", "alpha_1.0.safetensors"]
    for text, message in [("0:1:0.3", r"STOP 1 is not START plus a whole number of steps \(the grid ends at 0.9\)"),
                          ("1:0:0.1", "START must be <= STOP"), ("0:1:0", "STEP must be > 0"),
                          ("0:1", "expected START:STOP:STEP"), ("x", "'x' is not a number"),
                          ("inf", "not finite"), ("0,1,1", r"repeats \[1.0\]"), ("0:1:0.00001", "at most 10001")]:
        with pytest.raises(rs.InputError, match=message):
            parse_alphas(text)


def test_preprocess_settings_of_every_family():
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from timm.data import create_transform
    from torchvision.models import ResNet18_Weights

    tv = preprocess_settings(ResNet18_Weights.IMAGENET1K_V1.transforms())
    assert (tv.size, tv.mean, tv.std, tv.interpolation) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                                            T.InterpolationMode.BILINEAR)
    clip = preprocess_settings(image_transform_v2(PreprocessCfg(), is_train=False))
    assert clip.size == 224 and clip.interpolation == T.InterpolationMode.BICUBIC
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    timm_tf = preprocess_settings(create_transform(input_size=(3, 160, 160), crop_pct=0.95, mean=(0.5,) * 3,
                                                   std=(0.25,) * 3, interpolation="bicubic"))
    assert (timm_tf.size, timm_tf.std) == (160, (0.25, 0.25, 0.25))
    with pytest.raises(rs.InputError, match="cannot read the crop size and normalisation"):
        preprocess_settings(lambda image: image)
    with pytest.raises(rs.InputError, match="not a square"):
        preprocess_settings(T.Compose([T.CenterCrop((32, 48)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]))


def test_training_transforms_follow_the_recipe():
    from PIL import Image

    eval_tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    d1 = training_transform(eval_tf, FINETUNE)
    assert [type(t) for t in d1.per_image.transforms] == [T.RandomResizedCrop, T.PILToTensor]  # wise-ft: no flip
    assert d1.per_image.transforms[0].scale == (0.9, 1.0) and d1.per_image.transforms[0].size == (32, 32)
    assert (d1.mean, d1.std) == ((0.5,) * 3, (0.25,) * 3)
    d2 = training_transform(eval_tf, load_recipe("supervised", image_size=24))
    assert [type(t) for t in d2.per_image.transforms] == [T.RandomResizedCrop, T.RandomHorizontalFlip,
                                                          T.PILToTensor]
    assert d2.per_image.transforms[0].scale == (0.08, 1.0) and d2.per_image.transforms[0].size == (24, 24)

    # uint8 out of the workers, normalised on the device: exactly ToTensor + Normalize of the same crop
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    torch.manual_seed(5)
    crop = d2.per_image(image)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 24, 24)
    torch.manual_seed(5)
    classic = T.Compose([*d2.per_image.transforms[:-1], T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])(image)
    torch.testing.assert_close(d2.on_device(crop.unsqueeze(0))[0], classic, rtol=0, atol=0)

    plain = training_transform(eval_tf, load_recipe("finetune", crop_scale=None))
    assert plain.per_image is eval_tf and plain.mean is None
    x = torch.rand(2, 3, 4, 4)
    assert plain.on_device(x) is x
    with pytest.raises(rs.InputError, match="image_size needs crop_scale"):
        training_transform(eval_tf, load_recipe("finetune", crop_scale=None, image_size=16))


def test_global_batch_split():
    assert per_rank_batch(1024, 8) == 128 and per_rank_batch(6, 1) == 6
    with pytest.raises(rs.InputError, match=r"batch_size 10 is the global batch and must split evenly over the 4 "
                                            r"processes \(WORLD_SIZE\); pick a multiple of 4, e.g. 8"):
        per_rank_batch(10, 4)


def _batches(n: int, world_size: int, rank: int, per_rank: int, epoch: int, start: int = 0) -> list[list[int]]:
    sampler = EpochSampler(range(n), World(rank, world_size, rank), per_rank, seed=7)
    sampler.set_epoch(epoch, start_batch=start)
    keys = list(sampler)
    assert len(keys) == len(sampler) and all(e == epoch for e, _ in keys)
    indices = [i for _, i in keys]
    return [indices[k: k + per_rank] for k in range(0, len(indices), per_rank)]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    n, global_batch = 23, 6  # 3 full global batches, 5 samples dropped
    single = _batches(n, 1, 0, global_batch, epoch=2)
    assert len(single) == 3 and len({i for b in single for i in b}) == 18
    for world_size in (2, 3):
        shards = [_batches(n, world_size, r, global_batch // world_size, epoch=2) for r in range(world_size)]
        for k in range(3):
            assert sorted(i for shard in shards for i in shard[k]) == sorted(single[k])
    assert _batches(n, 1, 0, global_batch, epoch=2, start=2) == single[2:]  # a resumed epoch: the same batches on
    assert _batches(n, 1, 0, global_batch, epoch=3) != single  # a new permutation each epoch


def test_augmentation_is_a_function_of_seed_epoch_and_sample():
    class Noise(torch.utils.data.Dataset):  # a "transform" drawing from torch, numpy and random
        def __len__(self):
            return 4

        def __getitem__(self, index):
            import random
            return torch.rand(2).tolist() + [np.random.rand(), random.random()], index

    samples = SeededSamples(Noise(), seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    first = samples[(0, 1)]
    assert samples[(0, 1)] == first and samples[(1, 1)] != first and samples[(0, 2)] != first
    assert SeededSamples(Noise(), seed=4)[(0, 1)] != first
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global RNGs are left as they were
    assert derived_seed(3, 0, 1) < 2**63 and derived_seed(3, 0, 1) != derived_seed(3, 1, 0)


@pytest.mark.filterwarnings("ignore:this classifier records no architecture")
def test_one_training_step_applies_adamw_decay_clipping_and_label_smoothing(tmp_path):
    """One optimiser step of the training loop on a tiny model, against the step written out by hand: the
    label-smoothed cross-entropy, the gradient clipped to the recipe's max norm, AdamW's first step with decoupled
    weight decay. eps is large so that the Adam step depends on the gradient's scale (with eps ~ 0 the first
    step is lr * sign(g) and clipping would not show); each ingredient left out gives other weights."""
    from PIL import Image

    from robustsig.train.loop import train_classifier
    from train_helpers import tiny_classifier, write_colour_folder

    root = write_colour_folder(tmp_path / "data", per_class=2)
    dataset = rs.open_dataset("folder", root)
    lr, decay, smoothing, max_norm, eps = 0.1, 0.5, 0.2, 0.05, 0.01
    recipe = load_recipe("supervised", epochs=1, batch_size=len(dataset), lr=lr, weight_decay=decay,
                         schedule="constant", warmup_steps=0, label_smoothing=smoothing, grad_clip=max_norm, eps=eps,
                         crop_scale=None, hflip=False, precision="fp32")
    clf = tiny_classifier()
    start = {name: p.detach().clone() for name, p in clf.named_parameters()}
    images = torch.stack([clf.preprocess(Image.open(path).convert("RGB")) for path, _ in dataset.samples])
    labels = torch.tensor([label for _, label in dataset.samples])

    def by_hand(smooth: float, clip: float | None, wd: float) -> dict[str, torch.Tensor]:
        model = tiny_classifier()  # the same seed: the same initial weights
        params = dict(model.named_parameters())
        log_p = torch.log_softmax(model(images), dim=1)
        k = log_p.shape[1]
        loss = -((1 - smooth) * log_p.gather(1, labels[:, None]).squeeze(1) + smooth / k * log_p.sum(1)).mean()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
        scale = min(1.0, clip / (float(norm) + 1e-6)) if clip is not None else 1.0
        out = {}
        for name, p in params.items():
            g = grads[name] * scale
            m_hat = (1 - 0.9) * g / (1 - 0.9)                      # first moment, bias-corrected (step 1)
            v_hat = (1 - 0.999) * g * g / (1 - 0.999)              # second moment, bias-corrected
            out[name] = p.detach() * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        return out

    train_classifier(clf, dataset, recipe, tmp_path / "run", workers=0, checkpoint_every=0)
    trained = {name: p.detach() for name, p in clf.named_parameters()}
    expected = by_hand(smoothing, max_norm, decay)
    for name in trained:
        torch.testing.assert_close(trained[name], expected[name], rtol=0, atol=2e-6)
        assert not torch.equal(trained[name], start[name])

    def gap(other: dict[str, torch.Tensor]) -> float:
        return max(float((trained[name] - other[name]).abs().max()) for name in trained)

    assert gap(by_hand(0.0, max_norm, decay)) > 1e-4      # label smoothing changes the step
    assert gap(by_hand(smoothing, None, decay)) > 1e-4    # so does clipping
    assert gap(by_hand(smoothing, max_norm, 0.0)) > 1e-4  # and the decoupled weight decay
