"""What the demo data is, said plainly: the packaged photos it is cut from, the operations that made each set,
the class -> ImageNet-1k table, and that no ImageNet number is claimed. Written as ``provenance.json`` and
``provenance.md`` in the data folder and kept in :class:`~robustsig.demo.build.DemoData`.
"""

from __future__ import annotations

from typing import Any

from robustsig.data.classes import imagenet_classnames
from robustsig.demo.concepts import MIN_COLOR_FRACTION
from robustsig.demo.shifts import SHIFTS
from robustsig.demo.sources import (COLOR_IMAGES, DEMO_CLASSES, OTHER_CLASS, PHOTOS, PIP_NAMES, TEXTILE_CREDIT,
                                    TEXTURES, PackagedImage, demo_class_map)

SUMMARY = ("robustsig demo data: a handful of real photos, textures and textile images that ship inside installed "
           "Python packages (scikit-image, scikit-learn, conformal-clip-data), multiplied into hundreds of images by "
           "seeded crops, mirrors and small rotations, and shifted by plain image processing. It is not ImageNet nor "
           "any of its shift sets, and not Broden.")
NO_CLAIMS = ("No ImageNet image is used. Accuracies, effective robustness and concept counts computed on this data "
             "only exercise robustsig's pipeline: they are not ImageNet numbers, are not comparable to the paper's, "
             "and the effective-robustness line (fitted on ImageNet by the paper) does not hold for this data.")
ID_DOES = ("Random crops keeping at least 60% of the class's object in view (30-100% of the photo's area, aspect "
           "0.8-1.25), mirrored with probability 1/2, rotated by up to 10 degrees (cropped to no empty corner), "
           "shorter side resized; JPEG quality 92.")
TRAIN_DOES = ("The in-distribution set's operation with seeds of its own: other crops of the same photos, never an "
              "image of the in-distribution, shifted or concept sets. With one or two photos per class, training and "
              "test crops still show the same scene, so the finetuned model's in-distribution accuracy is close to "
              "a training accuracy, not a held-out one.")
CONCEPTS_DOES = ("Square crops (15-70% of a photo's area; 10-50% of a texture or colour image's) resized to the "
                 "concept side, and textile images resized. Colours are pixel-level: each pixel of a half-size label "
                 "map is named one of Broden's 11 colours by fixed value/saturation/hue rules; a colour covering "
                 f"under {MIN_COLOR_FRACTION:.0%} of an image is left unlabelled there. Objects are image-level: a "
                 "crop shows an object when at least half of its hand-marked box (or 30% of the crop) is in view, "
                 "and crops with only a sliver of an object are not used. Textures are image-level: the texture "
                 "photo or textile the crop comes from.")


def _source(image: PackagedImage) -> dict[str, Any]:
    return {"name": image.name, "package": PIP_NAMES[image.module], "file": image.path, "credit": image.credit,
            "objects": {name: [list(box) for box in boxes] for name, boxes in image.objects.items()}}


def provenance(*, size: dict[str, int], seed: int, versions: dict[str, str], counts: dict[str, int],
               positives: dict[str, int]) -> dict[str, Any]:
    """The provenance record of a build (JSON-able)."""
    names = imagenet_classnames()
    return {
        "summary": SUMMARY,
        "claims": NO_CLAIMS,
        "seed": seed,
        "size": size,
        "package_versions": versions,
        "classes": [{"name": c.name, "shows": c.shows, "photos": list(c.photos), "object": c.subject,
                     "imagenet_ids": list(c.imagenet_ids), "imagenet_names": [names[i] for i in c.imagenet_ids]}
                    for c in DEMO_CLASSES],
        "other_class": {"name": OTHER_CLASS, "images": 0, "imagenet_ids": len(demo_class_map()[OTHER_CLASS])},
        "scoring": (f"through class_map.json, as ObjectNet is scored: a prediction is right when the argmax over the "
                    f"mapped ImageNet-1k logits falls in the image's class's ids. The empty class {OTHER_CLASS!r} maps "
                    "every ImageNet-1k index no demo class may be called, so the argmax is over all 1,000 classes "
                    "and a prediction outside the class's ids is wrong (an argmax over the six classes' ids alone "
                    "would be right on nearly every image)"),
        "sets": {"photos": {"role": "in-distribution", "images": counts["photos"], "does": ID_DOES},
                 **{s.name: {"role": f"shift, an analogue of {s.like} (not {s.like})", "images": counts[s.name],
                             "does": s.does} for s in SHIFTS},
                 "photos-train": {"role": "training split (the demo finetunes MobileNetV2 on it)",
                                  "images": counts["photos-train"], "does": TRAIN_DOES},
                 "concepts": {"role": "concept set in the Broden format (not Broden)", "images": counts["concepts"],
                              "does": CONCEPTS_DOES, "positives": positives}},
        "sources": [_source(image) for image in [*PHOTOS.values(), *TEXTURES.values(), *COLOR_IMAGES.values()]]
                   + [{"name": "textile", "package": "conformal-clip-data", "file": "textile_images/simulated/nominal",
                       "credit": TEXTILE_CREDIT, "objects": {}}],
    }


def provenance_markdown(record: dict[str, Any]) -> str:
    """``provenance.md``: the record as a page a person reads."""
    lines = ["# robustsig demo data", "", record["summary"], "", f"**{record['claims']}**", "",
             "## Classes (in-distribution and shifted sets)", "",
             f"Scored {record['scoring']}.", "",
             "| class | what the photos show | ImageNet-1k ids | ImageNet-1k names |", "|---|---|---|---|"]
    for c in record["classes"]:
        lines.append(f"| {c['name']} | {c['shows']} | {', '.join(map(str, c['imagenet_ids']))} | "
                     f"{', '.join(c['imagenet_names'])} |")
    other = record["other_class"]
    lines.append(f"| {other['name']} | no images | the {other['imagenet_ids']} other indices | every other class |")
    lines += ["", "## Sets", "", "| set | role | images | how it is made |", "|---|---|---|---|"]
    for name, entry in record["sets"].items():
        lines.append(f"| {name} | {entry['role']} | {entry['images']} | {entry['does']} |")
    positives = record["sets"]["concepts"]["positives"]
    lines += ["", "Positive images per concept: " + ", ".join(f"{k} {v}" for k, v in positives.items()) + ".",
              "", "## Sources", "", "| image | package | file | credit |", "|---|---|---|---|"]
    for source in record["sources"]:
        lines.append(f"| {source['name']} | {source['package']} | {source['file']} | {source['credit']} |")
    versions = ", ".join(f"{k} {v}" for k, v in record["package_versions"].items())
    lines += ["", f"Built with seed {record['seed']}, sizes {record['size']}, from {versions}.", ""]
    return "\n".join(lines)
