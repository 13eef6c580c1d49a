"""What the demo data is, said plainly: which images are real ImageNet photos with their true labels, which are made
by published corruption code, which by robustsig's own image processing, what the training and concept sets are,
and what is claimed. Written as ``provenance.json`` and ``provenance.md`` in the data folder and kept in
:class:`~robustsig.demo.build.DemoData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustsig.data.classes import imagenet_classnames
from robustsig.demo.concept_set import CREDIT as CONCEPT_CREDIT
from robustsig.demo.concept_set import SIDE, concept_photos
from robustsig.demo.imagenet_val import FOOLBOX_CREDIT, LabelledPhoto
from robustsig.demo.shifts import SHIFTS
from robustsig.demo.sources import DEMO_CLASSES, PHOTOS, PIP_NAMES

SUMMARY = ("robustsig demo data: real ImageNet validation photos with their true labels (foolbox's 20), in several "
           "views each, as the in-distribution set; the same photos under ImageNet-C corruptions made by the "
           "published code (imagecorruptions) and under two renditions made by robustsig (a pencil sketch, a "
           "cartoon) as shifted sets; crops of other packaged photos (scikit-image, scikit-learn) to finetune on; "
           "and real labelled photos (CIFAR-10, CIFAR-100, ImageNet, packaged) as a concept set in the Broden "
           "format.")
NO_CLAIMS = ("The in-distribution images are views of only 20 ImageNet validation photos: accuracies, effective "
             "robustness and concept counts computed on them exercise robustsig's pipeline on real models and real "
             "photos, but are not ImageNet numbers, are not comparable to the paper's, and the effective-robustness "
             "line (fitted on ImageNet by the paper) was not fitted to these sets.")
ID_DOES = ("Each photo once whole, then in random crops of 40-100% of its area (aspect 3/4-4/3) mirrored with "
           "probability 1/2; shorter side resized; JPEG quality 92. The label is the photo's ImageNet-1k class.")
TRAIN_DOES = ("Random crops keeping at least 60% of the class's object (hand-marked box) in view, mirrored with "
              "probability 1/2, rotated by up to 10 degrees, of packaged photos that are neither an evaluated "
              "photo nor a concept photo; scored through train_class_map.json (each class a set of ImageNet-1k "
              "indices).")
CONCEPTS_DOES = (f"One image per photo: the largest centred square reduced to {SIDE}x{SIDE} pixels (the CIFAR photos' "
                 "size, so that sharpness tells nothing about the source); image-level concepts from the photo's "
                 "true label through a fixed taxonomy (robustsig.demo.concept_set), written before any model was "
                 "probed.")


def provenance(*, size: dict[str, int], seed: int, versions: dict[str, str], counts: dict[str, int],
               positives: dict[str, int], photos: Sequence[LabelledPhoto]) -> dict[str, Any]:
    """The provenance record of a build (JSON-able)."""
    names = imagenet_classnames()
    return {
        "summary": SUMMARY,
        "claims": NO_CLAIMS,
        "seed": seed,
        "size": size,
        "package_versions": versions,
        "photos": [{"file": photo.path.name, "imagenet_id": photo.label, "imagenet_name": names[photo.label]}
                   for photo in photos],
        "photo_credit": FOOLBOX_CREDIT,
        "scoring": ("through class_map.json: each class folder is one ImageNet-1k index, and the empty class 'other' "
                    "maps every other index, so a prediction is the top-1 over all 1,000 classes"),
        "sets": {"photos": {"role": "in-distribution (real ImageNet validation photos)", "images": counts["photos"],
                            "does": ID_DOES},
                 **{s.name: {"role": f"shift: {s.like}" + (" (published code)" if s.published else
                                                           " (robustsig's own image processing)"),
                             "images": counts[s.name], "does": s.does} for s in SHIFTS if s.name in counts},
                 "photos-train": {"role": "training split (the demo's finetunes train on it)",
                                  "images": counts["photos-train"], "does": TRAIN_DOES,
                                  "classes": [{"name": c.name, "shows": c.shows, "photos": list(c.photos),
                                               "imagenet_ids": list(c.imagenet_ids)} for c in DEMO_CLASSES]},
                 "concepts": {"role": "concept set in the Broden format (not Broden)", "images": counts["concepts"],
                              "does": CONCEPTS_DOES, "positives": positives, "credit": CONCEPT_CREDIT,
                              "photos": [{"name": p.name, "source": p.source, "label": p.label,
                                          "concepts": list(p.concepts)}
                                         for p in concept_photos()[:counts["concepts"]]]}},
        "training_photos": [{"name": name, "package": PIP_NAMES[PHOTOS[name].module], "file": PHOTOS[name].path,
                             "credit": PHOTOS[name].credit}
                            for name in dict.fromkeys(n for c in DEMO_CLASSES for n in c.photos)],
    }


def provenance_markdown(record: dict[str, Any]) -> str:
    """``provenance.md``: the record as a page a person reads."""
    lines = ["# robustsig demo data", "", record["summary"], "", f"**{record['claims']}**", "",
             "## In-distribution photos", "", f"{record['photo_credit']}. Scored {record['scoring']}.", "",
             "| file | ImageNet-1k id | class |", "|---|---|---|"]
    lines += [f"| {p['file']} | {p['imagenet_id']} | {p['imagenet_name']} |" for p in record["photos"]]
    lines += ["", "## Sets", "", "| set | role | images | how it is made |", "|---|---|---|---|"]
    for name, entry in record["sets"].items():
        lines.append(f"| {name} | {entry['role']} | {entry['images']} | {entry['does']} |")
    concepts = record["sets"]["concepts"]
    lines += ["", "## Concept set", "", f"Photos: {concepts['credit']}.", "",
              "Positive images per concept: " + ", ".join(f"{k} {v}" for k, v in concepts["positives"].items())
              + ".", "", "| photo | source | label | concepts |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['source']} | {p['label']} | {', '.join(p['concepts']) or '(none)'} |"
              for p in concepts["photos"]]
    lines += ["", "## Training photos", "", "| photo | package | file | credit |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['package']} | {p['file']} | {p['credit']} |" for p in record["training_photos"]]
    versions = ", ".join(f"{k} {v}" for k, v in record["package_versions"].items())
    lines += ["", f"Built with seed {record['seed']}, sizes {record['size']}, from {versions}.", ""]
    return "\n".join(lines)
