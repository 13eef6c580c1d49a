"""Zero-shot heads: the math against direct re-implementations, batching, the on-disk cache, prompt files."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import robustsig as rs
from robustsig.models.prompts import openai_templates, resolve_classnames, resolve_templates
from robustsig.models.zeroshot import zero_shot_head

NAMES = ["tabby cat", "golden retriever", "sports car", "espresso"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {c}.", "{} in the wild"]


def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)  # the same random tower whatever ran before
    model = open_clip.CLIP(embed_dim=16,
                           vision_cfg=CLIPVisionCfg(layers=2, width=32, patch_size=8, image_size=32, head_width=16),
                           text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def reference_head(model, tokenizer, names, templates) -> torch.Tensor:
    """Per class: L2-normalize each template's embedding, average, renormalize, times exp(logit_scale)."""
    rows = []
    with torch.no_grad():
        for name in names:
            emb = model.encode_text(tokenizer([t.replace("{c}", "{}").format(name) for t in templates])).double()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append(mean / mean.norm())
    return model.logit_scale.exp().double() * torch.stack(rows)


def test_head_equals_direct_reimplementation_and_open_clip(tokenizer, tmp_path):
    model = tiny_clip()
    head = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, batch_size=5, cache_dir=tmp_path)
    assert head.bias is None and head.weight.dtype == torch.float32
    assert tuple(head.weight.shape) == (len(NAMES), 16)
    # the head runs the float32 tower on prompts cut after their end-of-text token, the reference on all 77 tokens:
    # equal up to float32 rounding, ~1e-6 of the rows' norm (100)
    torch.testing.assert_close(head.weight.double(), reference_head(model, tokenizer, NAMES, TEMPLATES),
                               rtol=1e-5, atol=1e-4)
    # open_clip's own builder (float32, (d, K), unscaled) agrees up to float32 rounding
    theirs = open_clip.build_zero_shot_classifier(model, tokenizer, NAMES,
                                                  [t.replace("{c}", "{}") for t in TEMPLATES])
    torch.testing.assert_close(head.weight, 100.0 * theirs.T, rtol=1e-4, atol=1e-4)
    # every row has norm exp(logit_scale)
    torch.testing.assert_close(head.weight.double().norm(dim=1), torch.full((len(NAMES),), 100.0, dtype=torch.float64))


def test_batch_size_does_not_change_the_head(tokenizer):
    model = tiny_clip()
    one = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, batch_size=1, use_cache=False)
    all_at_once = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, batch_size=1000, use_cache=False)
    torch.testing.assert_close(one.weight, all_at_once.weight, rtol=1e-5, atol=1e-5)  # float32 text tower


def test_logit_bias_becomes_the_head_bias(tokenizer):
    model = tiny_clip()
    model.logit_bias = torch.nn.Parameter(torch.tensor([-3.5]))
    head = zero_shot_head(model, tokenizer, NAMES[:2], TEMPLATES[:1], use_cache=False)
    torch.testing.assert_close(head.bias, torch.full((2,), -3.5))


class CountingTextTower:
    """Wraps ``model.encode_text`` to count how often the text tower runs."""

    def __init__(self, model):
        self.calls = 0
        self.inner = model.encode_text
        model.encode_text = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_cache_hits_only_for_identical_text_tower_and_prompts(tokenizer, tmp_path):
    model = tiny_clip()
    counter = CountingTextTower(model)
    first = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 1 and len(list(tmp_path.glob("zeroshot-*.safetensors"))) == 1

    again = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 1  # hit
    torch.testing.assert_close(again.weight, first.weight, rtol=0, atol=0)

    zero_shot_head(model, tokenizer, NAMES, TEMPLATES[:2] + ["a photo of the {}"], cache_dir=tmp_path)
    assert counter.calls == 2  # a changed template misses
    zero_shot_head(model, tokenizer, NAMES[::-1], TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 3  # changed class order misses

    with torch.no_grad():
        model.visual.proj.add_(1.0)  # the image tower does not enter the head
    zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 3
    with torch.no_grad():
        model.text_projection[0].add_(0.5)  # the text tower does
    changed = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 4
    assert not torch.allclose(changed.weight, first.weight)
    assert len(list(tmp_path.glob("zeroshot-*.safetensors"))) == 4


def test_damaged_cache_entry_is_rebuilt(tokenizer, tmp_path):
    model = tiny_clip()
    first = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("zeroshot-*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    counter = CountingTextTower(model)
    rebuilt = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, cache_dir=tmp_path)
    assert counter.calls == 1
    # (the counting wrapper hides the tower's parts, so the rebuild runs it on all 77 tokens: float32 rounding)
    torch.testing.assert_close(rebuilt.weight, first.weight, rtol=1e-5, atol=1e-4)


def test_prompts_from_files(tokenizer, tmp_path):
    (tmp_path / "classes.txt").write_text("# my classes\ntabby cat\n\ngolden retriever\n", encoding="utf-8")
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\nitap of a {}.\n", encoding="utf-8")
    assert resolve_classnames(tmp_path / "classes.txt") == ["tabby cat", "golden retriever"]
    assert resolve_templates(str(tmp_path / "templates.txt")) == ["a photo of a {}.", "itap of a {}."]
    model = tiny_clip()
    from_files = zero_shot_head(model, tokenizer, tmp_path / "classes.txt", tmp_path / "templates.txt",
                                use_cache=False)
    from_lists = zero_shot_head(model, tokenizer, ["tabby cat", "golden retriever"],
                                ["a photo of a {}.", "itap of a {}."], use_cache=False)
    torch.testing.assert_close(from_files.weight, from_lists.weight, rtol=0, atol=0)


def test_defaults_are_open_clips_imagenet_prompts():
    templates = openai_templates()
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."
    assert len(resolve_classnames(None, default=open_clip.IMAGENET_CLASSNAMES)) == 1000


@pytest.mark.parametrize("templates, message", [
    (["a photo of a cat"], "no '{}' or '{c}'"),
    ([], "no templates"),
    ([3], "must be a string"),
])
def test_bad_templates(tokenizer, templates, message):
    with pytest.raises(rs.InputError, match=message):
        zero_shot_head(tiny_clip(), tokenizer, NAMES, templates, use_cache=False)


def test_bad_inputs(tokenizer, tmp_path):
    with pytest.raises(rs.InputError, match="not found"):
        zero_shot_head(tiny_clip(), tokenizer, tmp_path / "missing.txt", TEMPLATES, use_cache=False)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(rs.InputError, match="is empty"):
        zero_shot_head(tiny_clip(), tokenizer, tmp_path / "empty.txt", TEMPLATES, use_cache=False)
    with pytest.raises(rs.InputError, match="non-empty strings"):
        zero_shot_head(tiny_clip(), tokenizer, ["cat", ""], TEMPLATES, use_cache=False)
    with pytest.raises(rs.InputError, match="CLIP model"):
        zero_shot_head(torch.nn.Linear(2, 2), tokenizer, NAMES, TEMPLATES, use_cache=False)
    with pytest.raises(rs.InputError, match="batch_size"):
        zero_shot_head(tiny_clip(), tokenizer, NAMES, TEMPLATES, batch_size=0, use_cache=False)


# --- the cut-short causal text tower ------------------------------------------------------------------------
LONG_TEMPLATES = ["{}", "a photo of a {}.", "a bad photo of the {} on a rainy afternoon in the old town square.",
                  "itap of my {c}.", "a close-up origami sculpture of the small {}, seen from far above the table."]


def tiny_custom_text_clip(**text) -> torch.nn.Module:
    model = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2, **text))
    return model.eval()


def sequence_lengths(model) -> list[int]:
    """Records the token-sequence length of every text-transformer pass."""
    lengths: list[int] = []
    transformer = model.text.transformer if hasattr(model, "text") else model.transformer
    transformer.register_forward_pre_hook(lambda _m, args, kwargs: lengths.append(args[0].shape[1]),
                                          with_kwargs=True)
    return lengths


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(((a * b).sum(1) / (a.square().sum(1) * b.square().sum(1)).sqrt()).min())


@pytest.mark.parametrize("make, causal", [(tiny_clip, True), (tiny_custom_text_clip, True),
                                          (lambda: tiny_custom_text_clip(no_causal_mask=True), False),
                                          (lambda: tiny_custom_text_clip(pool_type="last"), False)])
def test_cut_short_tower_gives_open_clips_head(make, causal, tokenizer):
    from robustsig.models.zeroshot import causal_text_tower

    torch.manual_seed(0)
    model = make()
    assert (causal_text_tower(model) is not None) is causal
    lengths = sequence_lengths(model)
    head = zero_shot_head(model, tokenizer, NAMES, LONG_TEMPLATES, batch_size=3, use_cache=False)
    templates = [t.replace("{c}", "{}") for t in LONG_TEMPLATES]
    theirs = open_clip.build_zero_shot_classifier(model, tokenizer, NAMES, templates).T
    assert min_cosine(head.weight, theirs) >= 0.99999
    torch.testing.assert_close(head.weight.double(), reference_head(model, tokenizer, NAMES, LONG_TEMPLATES),
                               rtol=1e-5, atol=1e-5)
    # the passes after ours: open_clip's builder (10 classes a pass), then the reference (one per class)
    ours = lengths[:-(len(NAMES) + (len(NAMES) * len(LONG_TEMPLATES) + 9) // 10)]
    if causal:  # every batch stops at its longest prompt's end-of-text token: far short of 77
        ends = tokenizer([t.format(n) for n in NAMES for t in templates]).argmax(-1)
        assert sorted(ours) == ours and max(ours) == int(ends.max()) + 1 and min(ours) < max(ours) < 77
    else:
        assert set(ours) == {77}


def test_cut_short_eos_pooling(tokenizer):
    from robustsig.models.zeroshot import causal_text_tower

    torch.manual_seed(1)
    eot = tokenizer.eot_token_id
    model = tiny_custom_text_clip(pool_type="eos", eos_id=eot)
    assert causal_text_tower(model) is not None
    head = zero_shot_head(model, tokenizer, NAMES, LONG_TEMPLATES, batch_size=4, use_cache=False)
    torch.testing.assert_close(head.weight.double(), reference_head(model, tokenizer, NAMES, LONG_TEMPLATES),
                               rtol=1e-5, atol=1e-5)


# --- built on first use ----------------------------------------------------------------------------------------
def test_classifier_builds_its_head_only_when_used(tokenizer, tmp_path):
    from robustsig.models.openclip import classifier_from_clip
    from robustsig.models.options import LoadOptions
    from robustsig.models.spec import ModelSpec

    torch.manual_seed(2)
    model = tiny_clip()
    lengths = sequence_lengths(model)
    options = LoadOptions(device=torch.device("cpu"), classnames=NAMES, templates=TEMPLATES, use_cache=False)
    clf = classifier_from_clip(model, tokenizer, spec=ModelSpec.parse("openclip:ViT-B-32"), options=options).eval()
    probe = len(lengths)  # one prompt to learn the width
    clf = clf.to(torch.float64).to(torch.float32)  # moves before the build are replayed after it
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = clf.encode(x)
        assert clf.head.built is False and len(lengths) == probe and h.shape == (3, 16)
        assert (clf.head.out_features, clf.head.in_features) == (len(NAMES), 16) and "not built" in repr(clf.head)
        eager = zero_shot_head(model, tokenizer, NAMES, TEMPLATES, use_cache=False)
        calls = len(lengths)
        logits = clf(x)  # first use builds it
    assert clf.head.built and len(lengths) == calls + 1
    torch.testing.assert_close(clf.W, eager.weight, rtol=0, atol=0)
    torch.testing.assert_close(logits, eager(h), rtol=0, atol=0)
    assert clf.W.device.type == "cpu" and clf.W.dtype == torch.float32
    assert clf.encoder.training is False  # the build left the image tower in eval mode

    # the weight, the state dict (fingerprint) and parameters() each build a head that is not built yet
    for use in (lambda c: c.W, lambda c: c.fingerprint(), lambda c: list(c.parameters())):
        other = classifier_from_clip(model, tokenizer, spec=ModelSpec.parse("openclip:ViT-B-32"), options=options)
        use(other)
        assert other.head.built
        torch.testing.assert_close(other.W, eager.weight, rtol=0, atol=0)
        assert all(p.device.type == "cpu" for p in other.parameters())

