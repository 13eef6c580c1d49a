"""Study presets: commented YAML files that ``robustsig study init --preset NAME`` writes for the user to fill in.

The ``paper`` preset is the pool of Crabbé et al.: 12 OpenCLIP zero-shot models, their finetuned counterparts
(recipe D.1, checkpoints the user makes), the ImageNet-supervised model of each backbone (recipe D.2 for the CLIP
ResNets, torchvision weights for the ViTs), the six ImageNet-family sets and Broden; and, commented out, the slot of
App. F's NoCLIP model (:data:`NOCLIP`) with its ``noclip`` analysis section.

Example:
    >>> import yaml
    >>> from robustsig.study.presets import preset_yaml
    >>> data = yaml.safe_load(preset_yaml("paper"))
    >>> sum(model["kind"] == "zero-shot" for model in data["models"])
    12
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from robustsig.errors import InputError
from robustsig.study.sections import PAPER_BASELINE, PLACEHOLDER_PREFIX

PAPER_POOL: dict[str, tuple[str, ...]] = {
    "RN50": ("openai", "yfcc15m", "cc12m"),
    "RN101": ("openai", "yfcc15m"),
    "ViT-B-16": ("openai", "laion400m_e32", "laion2b_s34b_b88k", "datacomp_l_s1b_b8k"),
    "ViT-B-32": ("openai", "laion400m_e32", "laion2b_s34b_b79k"),
}
"""The paper's OpenCLIP backbones and pretrained tags (the ViT-B-16 DataComp model is ``datacomp_l_s1b_b8k``)."""

PAPER_SUPERVISED: dict[str, str] = {
    "RN50": f"openclip:RN50@{PLACEHOLDER_PREFIX}supervised/RN50_imagenet.safetensors",
    "RN101": f"openclip:RN101@{PLACEHOLDER_PREFIX}supervised/RN101_imagenet.safetensors",
    "ViT-B-16": "torchvision:vit_b_16@IMAGENET1K_V1",
    "ViT-B-32": "torchvision:vit_b_32@IMAGENET1K_V1",
}
"""The ImageNet-supervised model of each backbone: the CLIP ResNets trained with recipe D.2 (checkpoints to fill
in), torchvision's ImageNet weights for the ViTs."""

PAPER_SHIFTS: tuple[tuple[str, str, str], ...] = (
    ("imagenet-v2", "imagenetv2-matched-frequency-format-val", "folders named 0..999 (class indices)"),
    ("imagenet-r", "imagenet-r", "wnid folders, 200 classes"),
    ("imagenet-sketch", "imagenet-sketch/sketch", "wnid folders"),
    ("objectnet", "objectnet-1.0", "the folder holding images/ and mappings/"),
    ("imagenet-a", "imagenet-a", "wnid folders, 200 classes"),
)


def _scalar(value: object) -> str:
    """One YAML scalar, quoted only where YAML needs it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()


def _model(name: str, spec: str, backbone: str, pretraining: str, kind: str) -> list[str]:
    return [f"  - name: {_scalar(name)}",
            f"    spec: {_scalar(spec)}",
            f"    backbone: {_scalar(backbone)}",
            f"    pretraining: {_scalar(pretraining)}",
            f"    kind: {kind}"]


def _paper_models() -> list[str]:
    lines = ["models:",
             "  # OpenCLIP zero-shot: open_clip fetches these weights by tag (or point the tag at a local file);",
             "  # the head is built from ImageNet class names x the 80 OpenAI templates (add `classnames:` and",
             "  # `templates:` files to change them)."]
    for arch, tags in PAPER_POOL.items():
        for tag in tags:
            lines += _model(f"{arch}-{tag}-zs", f"openclip:{arch}@{tag}", arch, tag, "zero-shot")
    lines += ["",
              "  # Finetuned on ImageNet (recipe D.1: `robustsig finetune openclip:ARCH@TAG --data IMAGENET_TRAIN`).",
              f"  # FILL IN: replace each {PLACEHOLDER_PREFIX}... with your checkpoint file."]
    for arch, tags in PAPER_POOL.items():
        for tag in tags:
            spec = f"openclip:{arch}@{PLACEHOLDER_PREFIX}finetuned/{arch}_{tag}.safetensors"
            lines += _model(f"{arch}-{tag}-ft", spec, arch, tag, "finetuned")
    lines += ["",
              "  # ImageNet-supervised, one per backbone. CLIP ResNets trained from scratch with recipe D.2",
              "  # (`robustsig train openclip:RN50 --data IMAGENET_TRAIN`); FILL IN their checkpoint files.",
              "  # The ViTs use torchvision's ImageNet weights (downloaded by torchvision, or cached locally)."]
    for arch, spec in PAPER_SUPERVISED.items():
        lines += _model(f"{arch}-sup", spec, arch, "imagenet-1k", "supervised")
    lines += ["",
              "  # Optional, App. F (Table 8, Fig. 10): NoCLIP, a ViT-B-16 pretrained SimCLR-style on YFCC-15M (no",
              "  # language supervision), then finetuned with labels on the ImageNet-labelled part of YFCC-15M (Fang",
              "  # et al. 2022). FILL IN its checkpoint (a robustsig checkpoint of the ViT-B-16 image tower with its",
              "  # 1000-class head: `rs.save_classifier`), then uncomment this entry and `noclip:` under analyses."]
    lines += [f"  # {line[2:]}" for line in _model(*NOCLIP, "finetuned")]  # commented out at its indentation
    return lines


NOCLIP: tuple[str, str, str, str] = (
    "ViT-B-16-noclip", f"openclip:ViT-B-16@{PLACEHOLDER_PREFIX}noclip/ViT-B-16_yfcc15m_simclr.safetensors", "ViT-B-16",
    "yfcc15m-simclr")
"""The NoCLIP slot of the paper's pool (App. F): name, spec (a checkpoint to fill in), backbone, pretraining."""


def _paper_datasets() -> list[str]:
    lines = ["datasets:",
             f"  # FILL IN every {PLACEHOLDER_PREFIX}... with the dataset's folder on your disk.",
             "  id:  # ImageNet-1k validation: wnid folders (val/n01440764/...) or the flat layout + ground truth",
             "    kind: imagenet",
             f"    root: {PLACEHOLDER_PREFIX}imagenet/val",
             "  shift:  # ER uses the mean accuracy over these (R and A on their 200 classes, ObjectNet on 113)"]
    for kind, folder, note in PAPER_SHIFTS:
        lines += [f"    - kind: {kind}", f"      root: {PLACEHOLDER_PREFIX}{folder}  # {note}"]
    lines += ["  broden:  # Broden concepts (1,197 concepts): the folder holding index.csv, label.csv, images/",
              f"    root: {PLACEHOLDER_PREFIX}broden1_224"]
    return lines


def _pairs() -> list[tuple[str, str, str]]:
    return [(f"{arch}-{tag}", f"{arch}-{tag}-zs", f"{arch}-{tag}-ft") for arch, tags in PAPER_POOL.items()
            for tag in tags]


def _paper_analyses() -> list[str]:
    lines = ["analyses:  # delete a section (or set `enabled: false`) to skip it; `--only` selects at run time",
             "  accuracy:  # top-1 on every set, and ER (eq. 1) against the baseline line",
             "    enabled: true",
             "  kurtosis:  # activation kurtosis of the head's input (eq. 2); `dataset:` defaults to the id set",
             "    enabled: true",
             "  importance:  # importance of the head's singular directions (eq. 4), privileged directions",
             "    enabled: true",
             "    privileged_ratio: null  # importance / mean above which a direction is privileged (null: default)",
             "  pruning:  # ACC and ER after pruning the least important singular directions (Fig. 3, 8, 9)",
             "    fractions: " + _scalar([round(0.05 * i, 2) for i in range(20)]),
             "    orders: [singular, importance, random]  # the paper's order, then two controls",
             "  concepts:  # AP of every direction for every Broden concept (Tables 3, 5-7, Fig. 4)",
             "    threshold: 0.9  # a concept is encoded by a direction when its AP >= threshold",
             "    min_positives: 10  # concepts with fewer positive images are skipped",
             "    bases: [singular, neuron]",
             "    top_k: 3  # concepts listed for the most privileged direction",
             "    venn_groups: null  # null: zero-shot / finetuned / supervised per backbone and pretraining",
             "    # orientation: positive = the paper's: the projection h . v_i is the concept's classifier and its AP",
             "    # is measured, one-sided (Section 4, after Suau et al.); head_svd fixes each v_i's sign (its",
             "    # largest-magnitude entry is positive), so the count is the same on every LAPACK build and device.",
             "    # `both` (a variant: max(AP(s), AP(-s))) counts either side; concepts.csv has both orientations'",
             "    # counts in named columns whichever is set here, and this picks what the derived steps use.",
             "    orientation: positive",
             "    thresholds: [0.8, 0.85, 0.9, 0.95]  # threshold sensitivity sweep (footnote 4: conclusions hold at 0.85)",
             "    permutations: 24999  # label permutations per concept, at most: raw vs significant counts (0: no test)",
             "    alpha: 0.05  # false discovery rate of the significant count (Benjamini-Hochberg)",
             "  cka:  # layer-by-layer CKA between each zero-shot model and its finetuned version (Fig. 5, 6)",
             "    kernel: linear",
             "    pairs:"]
    for _, zero_shot, finetuned in _pairs():
        lines += [f"      - {{model_a: {zero_shot}, model_b: {finetuned}, layers: all}}"]
    lines += ["  # noclip:  # App. F: Table 8 and Fig. 10 for the NoCLIP model (uncomment with its entry under models)",
              f"  #   models: [{NOCLIP[0]}]",
              "  #   compare: null  # null: the zero-shot models of its backbone (Fig. 10's ViT-B-16 models)",
              "  wiseft:  # Wise-FT: (1 - alpha) zero-shot + alpha finetuned (Fig. 11-18)",
              "    alphas: " + _scalar([round(0.1 * i, 1) for i in range(11)]),
              "    pairs:"]
    for name, zero_shot, finetuned in _pairs():
        lines += [f"      - {{name: {name}, zero_shot: {zero_shot}, finetuned: {finetuned}}}"]
    lines += ["  predict_er:  # signatures as ER predictors, leaving each model out, against DoC and ATC",
              "    label_free: true  # DoC and ATC predicted ER from the stored logits",
              "    combination: null  # signatures of the ridge combination (null: every one known for every model)"]
    return lines


def paper_preset() -> str:
    """The paper's study as commented YAML (structurally valid; its ``/path/to/...`` placeholders are to fill in)."""
    lines = [
        "# robustsig study: the model pool and analyses of Crabbe et al., \"Robust multimodal models have outlier",
        "# features and encode more concepts\". Written by `robustsig study init --preset paper`.",
        "#",
        "# Before `robustsig study run study.yaml`, fill in:",
        f"#   1. datasets: every {PLACEHOLDER_PREFIX}... with the folder of that dataset on your disk;",
        "#   2. models: the finetuned checkpoints (recipe D.1) and the supervised CLIP ResNets (recipe D.2).",
        "# `robustsig study validate study.yaml` lists every path still missing.",
        "# Relative paths are read from this file's folder.",
        "",
        "version: 1",
        "output_dir: paper-study  # results/ (tables as CSV) and report/ (report.html, figures) go here",
        "store_dir: paper-study/store  # extracted activations: the expensive part, reused by later runs",
        "device: auto  # auto | cpu | cuda | cuda:N | mps",
        "batch_size: 256",
        "workers: 8  # DataLoader worker processes",
        "autocast: none  # none | fp16 | bf16 (mixed precision on GPU)",
        "",
        *_paper_models(),
        "",
        *_paper_datasets(),
        "",
        "baseline:  # the ER line logit(ACC(S)) = b1 logit(ACC(I)) + b0: the paper's, or refit with",
        "  # `fit_csv: baseline.csv` (columns acc_id, acc_shift as fractions) instead of b1 and b0",
        f"  b1: {PAPER_BASELINE[0]}",
        f"  b0: {PAPER_BASELINE[1]}",
        "",
        *_paper_analyses(),
    ]
    return "\n".join(lines) + "\n"


PRESETS: dict[str, Callable[[], str]] = {"paper": paper_preset}
"""Preset name -> function returning its YAML text."""


def preset_yaml(name: str) -> str:
    """The YAML text of preset ``name``.

    Raises:
        InputError: an unknown preset name.
    """
    try:
        return PRESETS[name]()
    except KeyError:
        raise InputError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None
