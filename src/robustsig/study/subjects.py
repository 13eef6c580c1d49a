"""What a study extracts activations from: the models of the pool and the points of its Wise-FT sweeps.

A :class:`Subject` names one source of activations. A pool model is built from its spec; a model whose spec names
no weights (a random-init control such as ``torchvision:mobilenet_v2``) is built with torch's RNG seeded from the
model's name, so every run builds the same weights and reuses its stores. A Wise-FT point ``(1 - alpha) theta_zs +
alpha theta_ft`` is :func:`robustsig.interpolate` of the two pool models; alpha 0 and 1 are the pool models
themselves (interpolation reproduces them bit for bit), so their stores are shared.

:class:`Classifiers` builds them on demand and keeps the few last used, so one model is loaded once for all its
extractions and a sweep loads its two end points once.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from robustsig._contents import path_digest
from robustsig.errors import InputError, RobustsigError
from robustsig.models.classifier import Classifier
from robustsig.study.runlog import RunLog
from robustsig.study.sections import ModelEntry

if TYPE_CHECKING:
    from robustsig.study.analyses.wiseft import WiseFtPair
    from robustsig.study.config import StudyConfig

POOL_CAPACITY = 2
"""Pool models kept built at once (a Wise-FT sweep needs its two end points)."""


@dataclass(frozen=True)
class Subject:
    """A source of activations.

    Attributes:
        name: unique; names its store folders (``STORE_DIR/NAME/DATASET``) and AP files. A pool model's name, or
            ``PAIR@alpha=A`` for a Wise-FT point (``=`` never occurs in a model name).
        model: the pool model (None for a Wise-FT point).
        zero_shot, finetuned, alpha: a Wise-FT point's end points and weight.
    """

    name: str
    model: str | None = None
    zero_shot: str | None = None
    finetuned: str | None = None
    alpha: float | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """The pool models it is built from."""
        return (self.model,) if self.model is not None else (self.zero_shot, self.finetuned)


def model_subject(name: str) -> Subject:
    return Subject(name, model=name)


def wiseft_subject(pair: WiseFtPair, alpha: float) -> Subject:
    """The subject of a sweep point; alpha 0 and 1 are the end points' own subjects."""
    alpha = float(alpha)
    if alpha == 0.0:
        return model_subject(pair.zero_shot)
    if alpha == 1.0:
        return model_subject(pair.finetuned)
    return Subject(f"{pair.name}@alpha={alpha!r}", zero_shot=pair.zero_shot, finetuned=pair.finetuned, alpha=alpha)


def random_init_seed(name: str) -> int:
    """The seed a random-init model named ``name`` is built with (the same in every run and process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def model_identity(entry: ModelEntry) -> dict[str, Any]:
    """What determines a pool model's weights, known without loading it: the spec with its local checkpoint or
    model folder named by the digest of its bytes (:func:`~robustsig.extraction.key.portable_spec`), the digests of
    the class-name and template files it reads, and for a random-init model its seed and the torch version that
    draws it. Weights named by a tag (downloaded once, then cached) or shipped in a package are identified by the
    spec alone. No path is part of it: a study folder moved elsewhere keeps its identities. Each file is read only
    when its stat data changed since it was last hashed (:mod:`robustsig._contents`)."""
    from robustsig.extraction.key import portable_spec
    from robustsig.models.spec import ModelSpec

    spec = ModelSpec.parse(entry.spec)
    files = {"classnames": entry.classnames, "templates": entry.templates}
    identity: dict[str, Any] = {"spec": portable_spec(str(spec)),
                                "files": {role: path_digest(path) for role, path in files.items() if path is not None}}
    if spec.random_init:
        identity["random_init"] = {"seed": random_init_seed(entry.name), "torch": torch.__version__}
    return identity


class Classifiers:
    """Builds the classifier of each subject when first asked, and keeps the last few.

    Args:
        config: the study (model entries).
        device: where models are built and run (None: CUDA when available).
        log: the run log (a line per model built).
    """

    def __init__(self, config: StudyConfig, device: str | None, log: RunLog) -> None:
        self.config = config
        self.device = device
        self.log = log
        self._pool: OrderedDict[str, Classifier] = OrderedDict()
        self._failed: dict[str, RobustsigError] = {}
        self._point: tuple[Subject, Classifier] | None = None

    def identity(self, subject: Subject) -> dict[str, Any]:
        """What determines the subject's weights (see :func:`model_identity`), without building it."""
        if subject.model is not None:
            return model_identity(self.config.model(subject.model))
        return {"wiseft": subject.alpha, "zero_shot": model_identity(self.config.model(subject.zero_shot)),
                "finetuned": model_identity(self.config.model(subject.finetuned))}

    def get(self, subject: Subject) -> Classifier:
        """The subject's classifier (built now or kept from before).

        Raises:
            RobustsigError: the model cannot be built (the same error again for every later request of it).
        """
        if subject.model is not None:
            return self._model(subject.model)
        if self._point is not None and self._point[0] == subject:
            return self._point[1]
        from robustsig.models.wiseft import interpolate

        self._point = None
        zero_shot, finetuned = self._model(subject.zero_shot), self._model(subject.finetuned)
        try:
            mixed = interpolate(zero_shot, finetuned, subject.alpha)
        except RobustsigError as error:
            raise type(error)(f"Wise-FT between {subject.zero_shot!r} and {subject.finetuned!r}: {error}") from None
        self._point = (subject, mixed)
        return mixed

    def _model(self, name: str) -> Classifier:
        if name in self._failed:
            raise self._failed[name]
        if name in self._pool:
            self._pool.move_to_end(name)
            return self._pool[name]
        while len(self._pool) >= POOL_CAPACITY:
            self._pool.popitem(last=False)
        try:
            classifier = self._build(self.config.model(name))
        except RobustsigError as error:
            self._failed[name] = error
            raise
        # a pool model is never changed: its weights are digested once for the keys of all its stores
        classifier.pin_fingerprint()
        self._pool[name] = classifier
        return classifier

    def _build(self, entry: ModelEntry) -> Classifier:
        from robustsig.models.factory import load_classifier
        from robustsig.models.spec import ModelSpec

        begin = time.perf_counter()
        spec = ModelSpec.parse(entry.spec)
        options = {"device": self.device, "classnames": entry.classnames, "templates": entry.templates}
        try:
            if spec.random_init:
                seed = random_init_seed(entry.name)
                with torch.random.fork_rng(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*randomly initialised", category=UserWarning)
                    torch.manual_seed(seed)
                    classifier = load_classifier(spec, **options)
                note = f"random init (the spec names no weights), seed {seed} drawn from its name"
            else:
                classifier = load_classifier(spec, **options)
                note = f"loaded {spec}"
        except RobustsigError as error:
            raise type(error)(f"model {entry.name!r} ({entry.spec}) cannot be built: {error}") from None
        except (OSError, RuntimeError, ValueError, KeyError) as error:  # a broken file deep in a library
            raise InputError(f"model {entry.name!r} ({entry.spec}) cannot be built: {type(error).__name__}: "
                             f"{error}. Check the spec and its weights file") from None
        self.log.line("model", entry.name, f"{note} in {time.perf_counter() - begin:.1f} s "
                                           f"(head {tuple(classifier.W.shape)}, {len(classifier.layers)} layer taps)")
        return classifier
