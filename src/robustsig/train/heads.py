"""The head a training run trains (the recipe's ``head`` key): from scratch (recipe D.2, ``robustsig train --head``)
and finetuning (recipe D.1, ``robustsig finetune --head``), and why D.2 uses ``linear`` and D.1 ``wiseft``.

From scratch, the head is new (one output per class):

=====================  ============================================================================================
head                   what the classifier computes
=====================  ============================================================================================
``linear`` (D.2)       ``logits = W h + b`` on the raw embedding ``h`` (an ``nn.Linear`` with bias, PyTorch's
                       default initialisation). OpenCLIP architectures: ``h`` is the image tower's output (the
                       attention pool's projection, 1,024-d for RN50, 512-d for RN101) *not* divided by its norm.
``normalized-linear``  ``logits = W (h / ||h||)``: a bias-free ``nn.Linear`` on the L2-normalised embedding, the
                       form of CLIP's zero-shot head (and what ``robustsig train`` did before the head was a recipe
                       key). OpenCLIP architectures only.
=====================  ============================================================================================

Finetuning starts from the model's own head (OpenCLIP: the zero-shot head, ``100 x`` the normalised class text
embeddings, bias-free, on the normalised ``h``):

=====================  ============================================================================================
head                   what is trained
=====================  ============================================================================================
``wiseft`` (D.1)       wise-ft's head: the starting head with a trainable bias; a head without one gets a bias of
                       zeros (OpenCLIP: ``logits = W (h / ||h||) + b``, ``W`` from the zero-shot head, ``b``
                       from 0). A head that has a bias keeps it (timm, torchvision, bundled: their trained head).
``normalized-linear``  the bias-free zero-shot head on the normalised ``h``, nothing added (robustsig's D.1 before
                       it followed wise-ft's head). OpenCLIP only.
``linear``             the starting head as it is, which must be a linear layer with bias on a raw ``h`` (timm,
                       torchvision, bundled; the same run as ``wiseft`` for them).
null                   whatever head the classifier has, nothing added or checked (what a D.1 ``recipe.yaml``
                       written before the ``wiseft`` head says: that run trained the bias-free zero-shot head).
=====================  ============================================================================================

Why ``wiseft``. The paper (appendix D.1) finetunes the zero-shot models "as [35]" (Wise-FT), and wise-ft's code
(``mlfoundations/wise-ft``, ``src/models/modeling.py``) builds the head as ``ClassificationHead(normalize=True,
weights=zero-shot weights)``: an ``nn.Linear`` whose weight is the zero-shot weights (``logit_scale.exp()`` times
the normalised class embeddings, as robustsig's zero-shot head) and whose bias, given no biases, is
``torch.zeros_like(self.bias)``; its forward divides the image features by their norm. ``finetune.py`` then trains
every parameter that requires a gradient, the bias included, with AdamW's weight decay on all of them. CLIP's own
``logit_scale`` is not trained (it is folded into the weights). Why ``normalized-linear`` is kept: it is the head
robustsig's finetuned models had before, and a run with it trains the same weights as those runs did (which
themselves say ``head: null`` and resume with their own ``recipe.yaml``). The bias
is not measured by the paper's metrics (kurtosis reads ``h``, importance and concepts ``W``'s directions), but the
finetuned logits, the pruning curves (``W h + b``, pruning ``W`` only) and the weights Wise-FT mixes depend on it.

Why ``linear``. The paper (appendix D.2) trains CLIP's modified ResNets from scratch for 90 epochs with AdamW, a
step schedule, label smoothing, random crops and flips, and says nothing about the head: neither a bias nor a
normalisation of the embedding. Section 3 only says that ``h`` is the last layer's output, read by "a linear head
computing the ImageNet class logits". The usual supervised head is a linear layer with bias on un-normalised
pooled features: torchvision's ResNets and ViTs (the paper's own supervised ViT-B rows are torchvision checkpoints),
timm's classifiers, and timm's port of the CLIP ResNets (``resnet50_clip`` with 1,000 classes makes the attention
pool's output projection the classifier, with bias). CLIP normalises its embedding because its contrastive loss
compares cosines with a learned temperature (``logit_scale``); a cross-entropy head on a normalised embedding with
no temperature has logits bounded by the norms of ``W``'s rows (``|w_k . h| <= ||w_k||``), which must grow against
weight decay before predictions can be confident (cosine-softmax classifiers add an explicit scale for that
reason). ``linear`` keeps open_clip's image tower whole, so ``h`` lives in the same embedding space and layer as the
zero-shot and finetuned models of the same backbone, and gives it the head every other supervised model has.

What the choice means for the study. Both heads change what is *learned*; for a given network, normalising ``h``
changes only some of the measurements:

- kurtosis (eq. 2) standardises each vector by its own mean and deviation: the same for ``h`` and ``h / ||h||``;
- importance (eq. 4) averages ``|cos(v_i, h)|``: the same for both; pruning reads the model's own logits;
- concept AP (section 4) ranks images by ``h . v_i = ||h|| cos(v_i, h)``: with a raw ``h`` an image's norm enters
  every direction's ranking, so AP, unique concepts and polysemanticity differ between ``h`` and ``h / ||h||``.

``docs/h.md`` measures the last point on a real ImageNet model and lists what ``h`` is for every model family.

Example:
    >>> clf = scratch_start("openclip:RN50", dataset, head="linear")        # doctest: +SKIP
    >>> head_kind(clf), clf.b is not None                                   # doctest: +SKIP
    ('linear', True)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robustsig.errors import InputError
from robustsig.models.classifier import Classifier, add_zero_bias
from robustsig.models.openclip import CLIPImageEncoder
from robustsig.train.recipes import FINETUNE_HEADS, HEADS


def head_kind(clf: Classifier) -> str | None:
    """Which of :data:`~robustsig.train.recipes.HEADS` ``clf`` has: ``"linear"`` (a head with bias on an encoder
    that does not normalise), ``"normalized-linear"`` (a bias-free head on robustsig's normalising CLIP encoder), or
    ``None`` for any other combination. Only robustsig's CLIP encoder normalises ``h``; every other encoder is taken
    as raw."""
    has_bias = clf.head._parameters.get("bias") is not None  # not .bias: that would build a lazy zero-shot head
    normalises = isinstance(clf.encoder, CLIPImageEncoder) and clf.encoder.normalize
    if has_bias and not normalises:
        return "linear"
    if normalises and not has_bias:
        return "normalized-linear"
    return None


def describe_head(clf: Classifier) -> str:
    """``clf``'s head in words: its kind (:func:`head_kind`), whether it has a bias, whether ``h`` is normalised."""
    kind = head_kind(clf)
    layer = "a linear head with bias" if clf.head._parameters.get("bias") is not None else "a bias-free linear head"
    normalised = isinstance(clf.encoder, CLIPImageEncoder) and clf.encoder.normalize
    words = f"{layer} on the {'L2-normalised' if normalised else 'raw'} embedding"
    return f"{kind!r} ({words})" if kind else words


def check_recipe_head(clf: Classifier, head: str | None) -> None:
    """Refuse to train ``clf`` under a recipe whose ``head`` names another head than the one it has (the recipe
    record, ``recipe.yaml``, must say what was trained): ``wiseft`` needs a head with a bias, ``linear`` and
    ``normalized-linear`` that :func:`head_kind`; ``head=None`` accepts any head.

    Raises:
        InputError: the recipe names a head ``clf`` does not have.
    """
    if head == "wiseft":
        if clf.head._parameters.get("bias") is None:
            raise InputError(f"the recipe's head is 'wiseft' (wise-ft's: a head with a trainable bias), but this "
                             f"classifier has {describe_head(clf)}; build it with finetune_start(..., head='wiseft') "
                             "(as `robustsig finetune` does), or set the recipe's head to null to train the head the "
                             "model has")
    elif head is not None and head_kind(clf) != head:
        raise InputError(f"the recipe's head is {head!r}, but this classifier has {describe_head(clf)}; build it "
                         f"with scratch_start(..., head={head!r}) (as `robustsig train` does) or finetune_start(..., "
                         f"head={head!r}), or set the recipe's head to null to train the head the model has")


def check_head(head: str | None, family: str | None, spec: str = "") -> None:
    """Refuse a head a model of ``family`` trained from scratch cannot have.

    Raises:
        InputError: ``head`` is not one of :data:`~robustsig.train.recipes.HEADS`, or is ``normalized-linear`` for a
            family whose loader does not normalise ``h`` (only OpenCLIP's does, and loads it back normalised).
    """
    if head not in HEADS:
        raise InputError(f"head {head!r}: expected one of {', '.join(HEADS)} for a model trained from scratch (set "
                         "it with --head or the recipe's 'head' key; finetuning, which starts from a model's own "
                         f"head, takes {', '.join(FINETUNE_HEADS)}: use `robustsig finetune`)")
    if head == "normalized-linear" and family != "openclip":
        raise InputError(f"head 'normalized-linear' is for OpenCLIP architectures, whose encoder robustsig "
                         f"normalises and loads back normalised; {spec or family} has an un-normalised h and loads "
                         "back with its own linear head: use --head linear")


def check_finetune_head(head: str | None, family: str | None, spec: str = "") -> None:
    """Refuse a head a finetuning of a model of ``family`` cannot train.

    Raises:
        InputError: ``head`` is not one of :data:`~robustsig.train.recipes.FINETUNE_HEADS` or None, or is
            ``normalized-linear`` for a family whose head is not the bias-free zero-shot head (only OpenCLIP's is).
    """
    if head is not None and head not in FINETUNE_HEADS:
        raise InputError(f"head {head!r}: expected one of {', '.join(FINETUNE_HEADS)} for a finetuning (wiseft, "
                         "D.1's: the starting head with a trainable bias), or null for the head the model has (set it "
                         "with --head or the recipe's 'head' key)")
    if head == "normalized-linear" and family != "openclip":
        raise InputError(f"head 'normalized-linear' is the bias-free zero-shot head of OpenCLIP models; "
                         f"{spec or family} has a trained head: use --head wiseft (or linear)")


def finetune_head(clf: Classifier, head: str | None) -> None:
    """Give the classifier a finetuning starts from the head ``head`` (in place): ``wiseft`` adds a trainable bias
    of zeros to a head without one (:func:`~robustsig.models.classifier.add_zero_bias`; the logits do not change);
    any other head is left as it is (the training loop checks it against the recipe)."""
    if head == "wiseft":
        add_zero_bias(clf.head)


def set_head(clf: Classifier, head: str | None, classnames: Sequence[str]) -> None:
    """Give a freshly built ``clf`` the head ``head`` with one output per class name (in place).

    OpenCLIP classifiers get a new ``nn.Linear`` and their encoder's normalisation set to match (recorded in
    ``meta["build"]["normalize"]``, so the saved model loads back with the same ``h``). Other families keep their
    own head when it has a bias and the right number of outputs (their architecture's initialisation), and get a new
    ``nn.Linear`` with bias otherwise.

    Raises:
        InputError: see :func:`check_head`.
    """
    family = clf.meta.get("family")
    check_head(head, family, clf.spec)
    if family == "openclip":
        normalize = head == "normalized-linear"
        clf.encoder.normalize = normalize
        clf.meta["build"] = {**clf.meta.get("build", {}), "normalize": normalize}
        replace_head(clf, classnames, bias=not normalize)
    elif clf.head._parameters.get("bias") is None or clf.head.out_features != len(classnames):
        replace_head(clf, classnames, bias=True)


def replace_head(clf: Classifier, classnames: Sequence[str], bias: bool | None = None) -> None:
    """Give ``clf`` a new ``nn.Linear`` head (PyTorch's default initialisation) of one output per class name, on
    encoder's device; ``bias``: whether it has one (``None``: as the old head). A zero-shot head not built yet is
    dropped without being built."""
    old = clf.head
    if bias is None:
        bias = old._parameters.get("bias") is not None
    first = next(clf.encoder.parameters(), None)
    device = first.device if first is not None else old.weight.device
    # drawn on the CPU, then moved: the same seeded weights on every device
    clf.head = nn.Linear(old.in_features, len(classnames), bias=bias).to(device)
    clf.classnames = list(classnames)
