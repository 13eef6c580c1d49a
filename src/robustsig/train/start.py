"""The classifier a training run starts from: a model with weights (finetuning) or a fresh one (from scratch).

- :func:`finetune_start`: the spec's classifier with its weights. For OpenCLIP the head is the zero-shot head
  built for the training set's class names, with wise-ft's trainable bias of zeros added by D.1's head ``wiseft``
  (wise-ft's initialisation, :mod:`robustsig.train.heads`); other families keep their trained head when it has one
  output per class, or get a new randomly initialised head when asked (``new_head``).
- :func:`scratch_start`: the spec's architecture with random weights and a randomly initialised head of one
  output per class, of the kind the recipe names (:mod:`robustsig.train.heads`: ``linear``, D.2's, or
  ``normalized-linear``; an OpenCLIP model's zero-shot head from a random text tower is not kept).

A training set with a ``class_map`` (its classes as sets of ImageNet-1k indices, see
:mod:`robustsig.data.classmap`) is trained through the whole ImageNet head with the set likelihood
(:mod:`robustsig.train.objective`): :func:`finetune_start` keeps the model's full head (OpenCLIP: the zero-shot
head of the 1,000 ImageNet class names) and checks that it covers the map's ids; :func:`scratch_start` gives the
model a random head of one output per ImageNet-1k class.

Both seed torch first, so new weights are the same in every process of a ``torchrun`` job and in every rerun.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from robustsig.errors import InputError
from robustsig.data.classes import imagenet_classnames
from robustsig.models.classifier import Classifier
from robustsig.models.factory import load_classifier
from robustsig.models.prompts import ClassnamesLike, TemplatesLike
from robustsig.models.spec import ModelSpec
from robustsig.train.heads import check_finetune_head, check_head, finetune_head, replace_head, set_head


def finetune_start(spec: str | ModelSpec, dataset: Any, *, device: str | torch.device | None = None,
                   classnames: ClassnamesLike = None, templates: TemplatesLike = None, new_head: bool = False,
                   seed: int = 0, cache_dir: str | None = None, head: str | None = "wiseft") -> Classifier:
    """The classifier finetuning starts from.

    Args:
        spec: a model spec with weights (``openclip:ViT-B-32@openai``, ``timm:resnet50@/w.pt``...).
        dataset: the training set (its ``classnames`` name the classes, one per head output; with a
            ``class_map``, its classes are sets of the head's outputs and the whole head is kept).
        device: where to build it.
        classnames: OpenCLIP: the class names the zero-shot head is built for (default: the dataset's; with a
            class map, ImageNet-1k's).
        templates: OpenCLIP: the prompt templates (default: OpenAI's 80).
        new_head: replace a trained head whose size does not match the dataset by a random one (not with a class
            map: the map names the outputs of the head it would replace).
        seed: seeds any new weights.
        cache_dir: the zero-shot head cache.
        head: the recipe's head (:mod:`robustsig.train.heads`): ``"wiseft"`` (D.1's, wise-ft's: a head without a
            bias, as OpenCLIP's zero-shot head, gets a trainable bias of zeros), ``"normalized-linear"`` (the
            bias-free zero-shot head, OpenCLIP only), ``"linear"`` or ``None`` (the head as loaded).

    Raises:
        InputError: a trained head with another number of outputs than the dataset has classes (without
            ``new_head``), class names of the wrong count, a head a finetuning cannot train, or, with a class map,
            ``new_head`` or a map id beyond the head.

    Example:
        >>> ds = rs.open_dataset("folder", "photos/", class_map="class_map.json")   # doctest: +SKIP
        >>> finetune_start("bundled:mobilenet_v2", ds).head.out_features            # doctest: +SKIP
        1000
    """
    parsed = _trainable(spec)
    check_finetune_head(head, parsed.family, str(parsed))  # before any model is built
    clf = _finetune_start(parsed, dataset, device=device, classnames=classnames, templates=templates,
                          new_head=new_head, seed=seed, cache_dir=cache_dir)
    finetune_head(clf, head)
    return clf


def _finetune_start(parsed: ModelSpec, dataset: Any, *, device: str | torch.device | None,
                    classnames: ClassnamesLike, templates: TemplatesLike, new_head: bool, seed: int,
                    cache_dir: str | None) -> Classifier:
    """:func:`finetune_start` before its head is given the recipe's form."""
    names = _dataset_classnames(dataset)
    torch.manual_seed(seed)
    if getattr(dataset, "class_map", None) is not None:
        return _class_map_start(parsed, dataset, device=device, classnames=classnames, templates=templates,
                                new_head=new_head, cache_dir=cache_dir)
    if parsed.family == "openclip":
        clf = load_classifier(parsed, device=device, classnames=classnames if classnames is not None else names,
                              templates=templates, cache_dir=cache_dir)
        if clf.head.out_features != len(names):
            raise InputError(f"{len(clf.classnames)} class names for the zero-shot head, but the training set has "
                             f"{len(names)} classes; pass one name per class folder")
        return clf
    if classnames is not None or templates is not None:
        raise InputError(f"classnames and templates build zero-shot heads of OpenCLIP models; {parsed} has a trained "
                         "head")
    clf = load_classifier(parsed, device=device)
    if clf.head.out_features != len(names):
        if not new_head:
            raise InputError(f"{parsed} has a head of {clf.head.out_features} outputs but the training set has "
                             f"{len(names)} classes; pass --new-head to replace the head by a randomly initialised "
                             f"one of {len(names)} outputs")
        replace_head(clf, names)
    return clf


def scratch_start(spec: str | ModelSpec, dataset: Any, *, device: str | torch.device | None = None,
                  seed: int = 0, head: str | None = "linear") -> Classifier:
    """A randomly initialised classifier of the spec's architecture with one output per class of ``dataset``.

    Args:
        spec: an architecture without weights (``openclip:RN50``, ``torchvision:resnet50``...).
        dataset: the training set (its class names; with a ``class_map``, one output per ImageNet-1k class).
        device: where to build it.
        seed: seeds the new weights.
        head: ``"linear"`` (D.2's: a linear layer with bias on the raw embedding) or ``"normalized-linear"`` (a
            bias-free one on the L2-normalised embedding; OpenCLIP only); see :mod:`robustsig.train.heads`.

    Raises:
        InputError: the spec names weights (training from scratch starts from none; finetune from weights
            instead), or an unknown head or one the family cannot have.
    """
    parsed = _trainable(spec)
    check_head(head, parsed.family, str(parsed))  # before any model is built
    if not parsed.random_init:
        raise InputError(f"training from scratch starts from random weights, but {parsed} names weights "
                         f"({parsed.weights or 'bundled'}); drop '@...' from the spec (e.g. "
                         f"'{parsed.family}:{parsed.name}'), or use `robustsig finetune` to start from them")
    names = _dataset_classnames(dataset)
    if getattr(dataset, "class_map", None) is not None:
        names = list(imagenet_classnames())  # the map's ids are ImageNet-1k indices: one output per ImageNet class
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised", category=UserWarning)
        if parsed.family == "openclip":  # a cheap head (one template, no cache): it is replaced below
            clf = load_classifier(parsed, device=device, classnames=names, templates=["{}"], use_cache=False)
        else:
            clf = load_classifier(parsed, device=device)
    set_head(clf, head, names)
    return clf


def _class_map_start(parsed: ModelSpec, dataset: Any, *, device: str | torch.device | None,
                     classnames: ClassnamesLike, templates: TemplatesLike, new_head: bool,
                     cache_dir: str | None) -> Classifier:
    """:func:`finetune_start` for a dataset with a class map: the full head, checked to cover the map's ids."""
    where = f"the training set at {getattr(dataset, 'root', None)!r}"
    if new_head:
        raise InputError(f"{where} has a class map: its classes are scored as sets of the head's ImageNet-1k "
                         "outputs, which --new-head would replace by random ones; drop --new-head to finetune the "
                         "whole head on the map, or drop the class map to train a head of one output per class")
    if parsed.family == "openclip":
        clf = load_classifier(parsed, device=device, classnames=classnames, templates=templates, cache_dir=cache_dir)
    else:
        if classnames is not None or templates is not None:
            raise InputError(f"classnames and templates build zero-shot heads of OpenCLIP models; {parsed} has a "
                             "trained head")
        clf = load_classifier(parsed, device=device)
    outputs = clf.head.out_features
    beyond = sorted({int(i) for ids in dataset.class_map for i in ids if int(i) >= outputs})
    if beyond:
        raise InputError(f"{where} has a class map naming head outputs {beyond[:5]}, but {parsed} has a head of "
                         f"{outputs} outputs; a class map names ImageNet-1k indices: start from a model with an "
                         "ImageNet-1k head, or drop the class map and pass --new-head for a head of one output per "
                         "class")
    return clf


def _trainable(spec: str | ModelSpec) -> ModelSpec:
    parsed = ModelSpec.parse(spec)
    if parsed.family == "hf":
        raise InputError(f"{parsed}: Hugging Face models do not load back from a robustsig checkpoint, so a trained "
                         "copy could not be used; train an openclip, timm, torchvision or bundled model")
    return parsed


def _dataset_classnames(dataset: Any) -> list[str]:
    names = list(getattr(dataset, "classnames", []) or [])
    if not names:
        raise InputError(f"the training set at {getattr(dataset, 'root', None)!r} has no class names (an unlabelled "
                         "folder?); training needs class sub-folders or a labelled csv")
    return names
