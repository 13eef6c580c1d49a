"""Zero-shot head build against open_clip's ``build_zero_shot_classifier``, side by side in one process (issue 12,
point 3; target >= 2.5x with the same head, min cosine >= 0.99999 per class).

ViT-B-32 with random init (no CLIP weights exist offline here; the text tower's cost does not depend on its
weights), ImageNet class names x all 80 OpenAI templates, on a subset of the classes (every 250th, so the prompt
lengths spread like the full head's; the full 1,000 x 80 head is 80,000 prompts). Both run the text tower under
``inference_mode``/``no_grad`` in float32 on the CPU; robustsig sorts prompts by end-of-text position and cuts
each batch after its longest prompt's end-of-text token.
"""

from __future__ import annotations

import warnings

import torch

from benchmarks._timing import report, side_by_side

CLASS_STEP = 250  # 4 of ImageNet's 1,000 classes x 80 templates = 320 prompts


def run() -> None:
    import open_clip

    from robustsig.models.prompts import imagenet_classnames, openai_templates
    from robustsig.models.zeroshot import zero_shot_head

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32", pretrained_image=False, load_weights=False).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    names = imagenet_classnames()[::CLASS_STEP]
    templates = openai_templates()
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
    ratio = report("zero-shot head build", medians, fast="robustsig", slow="open_clip", target=2.5)
    per_prompt = medians["robustsig"] / (len(names) * len(templates))
    print(f"  robustsig {1000 * per_prompt:.2f} ms per prompt: the full 1,000 x 80 head in about "
          f"{80_000 * per_prompt / 60:.1f} min here (open_clip's builder: {ratio * 80_000 * per_prompt / 60:.1f} min)",
          flush=True)
