"""Wise-FT weight interpolation: every float tensor mixed, integer buffers kept, exact endpoints, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import robustsig as rs
from robustsig.models.classifier import Classifier, LayerTap
from robustsig.models.wiseft import interpolate, interpolation_path


class SmallNet(nn.Module):
    def __init__(self, width=6):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)


def small_classifier(seed: int, width: int = 6, batches: int = 0) -> Classifier:
    torch.manual_seed(seed)
    clf = Classifier(SmallNet(width), nn.Linear(width, 4), preprocess=lambda im: im, classnames=list("abcd"),
                     taps={"conv": LayerTap("conv", "spatial")}, meta={"spec": f"test:net{seed}"})
    clf.train()
    for _ in range(batches):  # move BatchNorm's running statistics and num_batches_tracked
        clf(torch.randn(8, 3, 5, 5) * (seed + 1))
    return clf.eval()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0, 1.5, -0.25])
def test_every_float_tensor_is_mixed_and_integer_buffers_come_from_clf0(alpha):
    clf0, clf1 = small_classifier(0, batches=2), small_classifier(1, batches=5)
    mixed = interpolate(clf0, clf1, alpha)
    state0, state1, state = clf0.state_dict(), clf1.state_dict(), mixed.state_dict()
    assert state.keys() == state0.keys()
    floats = [k for k, v in state0.items() if v.is_floating_point()]
    assert {"head.weight", "head.bias", "encoder.bn.running_mean", "encoder.bn.running_var"} <= set(floats)
    for key in floats:
        torch.testing.assert_close(state[key], (1 - alpha) * state0[key] + alpha * state1[key], rtol=1e-6, atol=1e-6)
    assert state["encoder.bn.num_batches_tracked"].item() == 2  # clf0's, not 5 nor a mix
    assert mixed.meta["wiseft"]["alpha"] == alpha and mixed.meta["spec"] == f"wiseft(test:net0, test:net1, alpha={alpha:g})"
    # the inputs are untouched
    assert torch.equal(clf0.state_dict()["head.weight"], state0["head.weight"])


def test_endpoints_reproduce_the_inputs_bit_for_bit():
    clf0, clf1 = small_classifier(0, batches=1), small_classifier(1, batches=1)
    x = torch.randn(3, 3, 5, 5)
    assert interpolate(clf0, clf1, 0.0).fingerprint() == clf0.fingerprint()
    with torch.no_grad():
        torch.testing.assert_close(interpolate(clf0, clf1, 1.0)(x), clf1(x), rtol=0, atol=0)
    mixed_one = interpolate(clf0, clf1, 1.0).state_dict()
    assert all(torch.equal(mixed_one[k], v) for k, v in clf1.state_dict().items() if v.is_floating_point())


def test_linear_models_interpolate_their_logits_linearly():
    """With a linear encoder the logits are bilinear in the weights; at alpha the head and encoder both mix."""
    def linear(seed):
        torch.manual_seed(seed)
        return Classifier(nn.Linear(5, 3), nn.Linear(3, 2), preprocess=lambda im: im, classnames=["a", "b"])

    clf0, clf1, x = linear(0), linear(1), torch.randn(4, 5)
    alpha = 0.4
    w = lambda c: (c.head.weight @ c.encoder.weight)  # noqa: E731
    mixed = interpolate(clf0, clf1, alpha)
    torch.testing.assert_close(w(mixed), ((1 - alpha) * clf0.head.weight + alpha * clf1.head.weight)
                               @ ((1 - alpha) * clf0.encoder.weight + alpha * clf1.encoder.weight))
    assert mixed(x).shape == (4, 2)


def test_interpolation_path_reuses_one_model():
    clf0, clf1 = small_classifier(0), small_classifier(1)
    alphas = [0.0, 0.25, 1.0]
    seen = []
    for alpha, clf in interpolation_path(clf0, clf1, alphas):
        assert clf.fingerprint() == interpolate(clf0, clf1, alpha).fingerprint()
        seen.append(id(clf))
    assert len(set(seen)) == 1


def test_mismatched_architectures_name_the_first_key():
    with pytest.raises(rs.InputError, match=r"'encoder\.conv\.weight' has shape \(6, 3, 3, 3\) in the first .* "
                                            r"\(7, 3, 3, 3\) in the second"):
        interpolate(small_classifier(0, width=6), small_classifier(1, width=7), 0.5)
    other = small_classifier(1)
    other.encoder.extra = nn.Linear(1, 1)
    with pytest.raises(rs.InputError, match=r"'encoder\.extra\.weight' is in the second classifier but not the first"):
        interpolate(small_classifier(0), other, 0.5)
    with pytest.raises(rs.InputError, match=r"'encoder\.extra\.weight' is in the first classifier but not the second"):
        interpolate(other, small_classifier(0), 0.5)
    half = copy.deepcopy(small_classifier(1)).half()
    with pytest.raises(rs.InputError, match="torch.float32 in the first classifier and torch.float16"):
        interpolate(small_classifier(0), half, 0.5)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "half"])
def test_alpha_must_be_finite(alpha):
    with pytest.raises(rs.InputError, match="alpha must be"):
        interpolate(small_classifier(0), small_classifier(1), alpha)


def test_different_classnames_warn():
    clf1 = small_classifier(1)
    clf1.classnames = list("wxyz")
    with pytest.warns(UserWarning, match="different class names"):
        mixed = interpolate(small_classifier(0), clf1, 0.5)
    assert mixed.classnames == list("abcd")


def test_interpolated_real_model_saves_and_loads_back(tmp_path):
    from robustsig.models.checkpoint import save_classifier

    with pytest.warns(UserWarning, match="randomly initialised"):
        zero_shot = rs.load_classifier("torchvision:resnet18", device="cpu")
        finetuned = rs.load_classifier("torchvision:resnet18", device="cpu")
    mixed = interpolate(zero_shot, finetuned, 0.5)
    path = save_classifier(mixed, tmp_path / "wiseft.safetensors")
    back = rs.load_classifier(f"torchvision:resnet18@{path}", device="cpu")
    assert back.fingerprint() == mixed.fingerprint()
    assert back.meta["base_spec"] == "wiseft(torchvision:resnet18, torchvision:resnet18, alpha=0.5)"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(back(x), mixed(x), rtol=0, atol=0)


def bias_free(clf: Classifier) -> Classifier:
    """``clf`` with a bias-free head of the same weight (a CLIP zero-shot head's form)."""
    out = copy.deepcopy(clf)
    out.head = nn.Linear(clf.head.in_features, clf.head.out_features, bias=False)
    with torch.no_grad():
        out.head.weight.copy_(clf.head.weight)
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0, 1.5, -0.5])
def test_a_head_without_a_bias_mixes_as_a_zero_bias(alpha):
    """Zero-shot (no bias) x finetuned with wise-ft's bias: the bias mixes from 0, as wise-ft's zeros do; the ends
    are the inputs themselves, keys and fingerprints included."""
    zero_shot, finetuned = bias_free(small_classifier(0, batches=1)), small_classifier(1, batches=1)
    with torch.no_grad():
        finetuned.head.bias.copy_(torch.tensor([0.5, -1.25, 2.0, -0.375]))
    theta0, theta1 = zero_shot.state_dict(), finetuned.state_dict()
    x = torch.randn(3, 3, 5, 5)
    for first, second, a in ((zero_shot, finetuned, alpha), (finetuned, zero_shot, 1 - alpha)):
        mixed = interpolate(first, second, a)
        state = mixed.state_dict()
        if alpha == 0:  # the zero-shot model itself: no bias
            assert "head.bias" not in state and mixed.b is None and mixed.fingerprint() == zero_shot.fingerprint()
        else:
            expected = alpha * theta1["head.bias"].double()  # (1 - alpha) * 0 + alpha * b1
            torch.testing.assert_close(state["head.bias"].double(), expected, rtol=0, atol=1e-6)
        if alpha == 1:
            assert mixed.fingerprint() == finetuned.fingerprint()
        for key in ("head.weight", "encoder.conv.weight", "encoder.bn.running_var"):
            torch.testing.assert_close(state[key], (1 - alpha) * theta0[key] + alpha * theta1[key], rtol=1e-6,
                                       atol=1e-6)
        with torch.no_grad():
            h = mixed.encode(x)
            torch.testing.assert_close(mixed(x), h @ mixed.W.T + (0 if mixed.b is None else mixed.b), rtol=0, atol=0)


def test_the_bias_of_a_path_through_a_bias_free_end_comes_and_goes():
    zero_shot, finetuned = bias_free(small_classifier(0)), small_classifier(1)
    alphas = [0.5, 0.0, 1.0, 0.25, 0.0]
    seen = []
    for alpha, clf in interpolation_path(zero_shot, finetuned, alphas):
        assert clf.fingerprint() == interpolate(zero_shot, finetuned, alpha).fingerprint()
        assert (clf.b is None) is (alpha == 0.0)
        seen.append(id(clf))
    assert len(set(seen)) == 1
    both_free = interpolate(zero_shot, bias_free(finetuned), 0.5)  # two bias-free heads: no bias is made up
    assert both_free.b is None
