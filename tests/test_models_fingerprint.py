"""A classifier's pinned fingerprint: computed once, dropped by any change of its weights."""

from __future__ import annotations

import torch


def test_pinned_fingerprint_follows_every_change():
    from robustsig.models.classifier import Classifier

    clf = Classifier(torch.nn.Sequential(torch.nn.Linear(3, 4)), torch.nn.Linear(4, 2), preprocess=lambda im: im,
                     classnames=["a", "b"])
    first = clf.pin_fingerprint()
    assert clf.fingerprint() == first
    with torch.no_grad():
        clf.head.weight.mul_(2.0)  # in place: the version counter moves
    changed = clf.fingerprint()
    assert changed != first
    with torch.no_grad():
        clf.head.weight.div_(2.0)  # exact in binary floating point
    assert clf.fingerprint() == first  # the same values digest alike again
    clf.pin_fingerprint()
    clf.encoder[0].weight = torch.nn.Parameter(clf.encoder[0].weight.detach() * 2)  # replaced: a new storage
    assert clf.fingerprint() != first
