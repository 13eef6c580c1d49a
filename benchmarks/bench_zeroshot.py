"""Zero-shot head build against open_clip's ``build_zero_shot_classifier``, side by side in one process (issue 12,
point 3; target >= 2.5x with the same head, min cosine >= 0.99999 per class).

ViT-B-32 with random init (no CLIP weights exist offline here; the text tower's cost does not depend on its
weights), ImageNet class names x all 80 OpenAI templates, on 8 classes picked at the quantiles of their longest
prompt's end-of-text position (shortest to longest), so the subset spans the full head's prompt lengths. Both run
the text tower under ``inference_mode``/``no_grad`` in float32 on the CPU; robustsig sorts prompts by end-of-text
position and cuts each batch after its longest prompt's end-of-text token.

The full 1,000 x 80 head (80,000 prompts; ~50 min with open_clip's builder here) is not built: its ratio is
estimated from the tokens each builder runs through the tower (open_clip: 77 per prompt; robustsig: each batch's
cut length per prompt, from the full head's own length-sorted batches), scaled by the subset's measured times.
"""

from __future__ import annotations

import warnings

import torch

from benchmarks._timing import report, side_by_side

SUBSET = 8  # classes x 80 templates = 640 prompts


def run() -> None:
    import open_clip

    from robustsig.models.prompts import imagenet_classnames, openai_templates
    from robustsig.models.zeroshot import zero_shot_head

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32", pretrained_image=False, load_weights=False).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    from robustsig.models.zeroshot import _length_sorted_batches, causal_text_tower

    templates = openai_templates()
    every = imagenet_classnames()
    tower = causal_text_tower(model)
    prompt_ends = tower.end_positions(tokenizer([t.format(n) for n in every for t in templates]))
    longest = prompt_ends.view(len(every), len(templates)).amax(1)
    by_length = torch.argsort(longest, stable=True)
    names = [every[int(by_length[round(q * (len(every) - 1) / (SUBSET - 1))])] for q in range(SUBSET)]

    def tokens_through_tower(class_names: list[str]) -> int:
        tokens = tokenizer([t.format(n) for n in class_names for t in templates])
        return sum(len(rows) * length for rows, length in _length_sorted_batches(tower, tokens, 256))
    heads: dict[str, torch.Tensor] = {}

    def theirs() -> None:
        with torch.no_grad():
            heads["open_clip"] = open_clip.build_zero_shot_classifier(model, tokenizer, names, templates).T

    def ours() -> None:
        heads["robustsig"] = zero_shot_head(model, tokenizer, names, templates, use_cache=False).weight.detach()

    ours(), theirs()
    a, b = heads["robustsig"].double(), heads["open_clip"].double()
    cosine = float(((a * b).sum(1) / (a.square().sum(1) * b.square().sum(1)).sqrt()).min())
    ends = tokenizer([t.format(n) for n in names for t in templates]).argmax(-1)
    print(f"zero-shot head, ViT-B-32 (random init), {len(names)} classes x {len(templates)} templates = "
          f"{len(names) * len(templates)} prompts (end-of-text at position <= {int(ends.max())} of 77): "
          f"min cosine to open_clip's head {cosine:.8f} [target >= 0.99999: "
          f"{'met' if cosine >= 0.99999 else 'NOT met'}]", flush=True)
    medians = side_by_side({"robustsig": ours, "open_clip": theirs}, repeats=3, warmup=0)
    report("zero-shot head build", medians, fast="robustsig", slow="open_clip", target=2.5)
    prompts = len(names) * len(templates)
    ours_full = medians["robustsig"] * tokens_through_tower(every) / tokens_through_tower(names)
    theirs_full = medians["open_clip"] * len(every) * len(templates) / prompts
    print(f"  full 1,000 x 80 head (end-of-text at position <= {int(prompt_ends.max())}), estimated from the tokens "
          f"each builder runs: robustsig ~{ours_full / 60:.1f} min, open_clip ~{theirs_full / 60:.1f} min here: "
          f"~{theirs_full / ours_full:.1f}x", flush=True)
