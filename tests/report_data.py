"""A small synthetic results set covering every table, for the report tests (values chosen by hand)."""

from __future__ import annotations

from pathlib import Path

from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.cka import CkaRow
from robustsig.study.analyses.concepts.summary import ConceptRow, ConceptTopRow, VennRow
from robustsig.study.analyses.concepts.thresholds import ConceptThresholdRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow, OutlierRow
from robustsig.study.analyses.pruning import PruningRow
from robustsig.study.analyses.wiseft import WiseFtRow, WiseFtSignatureRow
from robustsig.study.results import DatasetRow, InputRecord, ModelRow, Results

XSS = "<script>alert(1)</script>"

MODELS = [
    ModelRow("rn50-oa-zs", "openclip:RN50@openai", "RN50", "openai", "zero-shot"),
    ModelRow("rn50-oa-ft", "openclip:RN50@/ckpt/rn50_ft.safetensors", "RN50", "openai", "finetuned"),
    ModelRow("rn50-yf-zs", "openclip:RN50@yfcc15m", "RN50", "yfcc15m", "zero-shot"),
    ModelRow("rn50-sup", "openclip:RN50@/ckpt/rn50_sup.safetensors", "RN50", "imagenet-1k", "supervised"),
    ModelRow("vit-oa-zs", "openclip:ViT-B-32@openai", "ViT-B-32", "openai", "zero-shot"),
]
CKA_SETS = {"val": 0.0, "sketch": 0.2, "v2": 0.4}
"""The CKA rows' datasets and how far below the id set's (val) their CKA lies."""
DATASETS = [DatasetRow("val", "imagenet", "id", "/data/val"), DatasetRow("sketch", "imagenet-sketch", "shift", "/s"),
            DatasetRow("broden", "broden", "concepts", "/b")]
# model -> (acc on val, acc on sketch)
ACCURACY = {"rn50-oa-zs": (0.598, 0.331), "rn50-oa-ft": (0.762, 0.254), "rn50-yf-zs": (0.318, 0.121),
            "rn50-sup": (0.751, 0.221), "vit-oa-zs": (0.633, 0.425)}
ER = {"rn50-oa-zs": 0.0812, "rn50-oa-ft": -0.0162, "rn50-yf-zs": 0.0203, "rn50-sup": -0.0421, "vit-oa-zs": 0.1234}
KURTOSIS = {"rn50-oa-zs": 41.27, "rn50-oa-ft": 7.04, "rn50-yf-zs": 19.5, "rn50-sup": 3.96, "vit-oa-zs": 12.31}
CONCEPTS = {"rn50-oa-zs": {"sky", "dog", "grass", XSS}, "rn50-oa-ft": {"dog", "grass"},
            "rn50-yf-zs": {"sky"}, "rn50-sup": {"dog", "tree"}, "vit-oa-zs": {"sky", "dog", "50%_a&b"}}
# the neuron basis encodes the same concepts plus "wood" (so one more unique concept per model)


def write_results(root: Path) -> Results:
    """Write every table of a 5-model study (2 backbones, 3 kinds) into ``root``; returns it."""
    results = Results(root)
    results.set_config({"output_dir": str(root.parent), "models": [m.model for m in MODELS], "note": XSS},
                       versions={"robustsig": "0.1.0", "torch": "2.14.1"})
    results.write(ModelRow, MODELS)
    results.write(DatasetRow, DATASETS)
    results.write(AccuracyRow, [AccuracyRow(m, d, acc, 1000) for m, accs in ACCURACY.items()
                                for d, acc in zip(("val", "sketch"), accs)])
    inputs = [InputRecord(m, d, f"key-{m}-{d}", 1000) for m in ACCURACY for d in ("val", "sketch")]
    results.record(AccuracyRow, inputs)
    results.write(RobustnessRow, [RobustnessRow(m, a[0], a[1], ER[m], 0.76, -1.49) for m, a in ACCURACY.items()])
    results.record(RobustnessRow, inputs, {"b1": 0.76, "b0": -1.49, "shift_sets": {"sketch": "imagenet-sketch"},
                                           "paper_shift_sets": False, "missing_classes": {"sketch": ["n01440764"]}})
    results.write(KurtosisRow, [KurtosisRow(m, "val", k, 1000, 64) for m, k in KURTOSIS.items()])
    results.record(KurtosisRow, [InputRecord(m, "val", f"key-{m}-val", 1000) for m in KURTOSIS])
    results.write(OutlierRow, [OutlierRow("rn50-oa-zs", "val", 17, 9.5), OutlierRow("rn50-oa-zs", "val", 3, 6.25)])
    importance = []
    for i, model in enumerate(MODELS):
        for direction in range(8):
            value = (0.5 if direction == 0 else 0.01) / (1 + i) / (1 + direction)
            importance.append(ImportanceRow(model.model, direction, 10.0 / (1 + direction), value, direction == 0))
    results.write(ImportanceRow, importance)
    results.write(PrivilegedRow, [PrivilegedRow(m.model, 8, 1, 0, 6.5, 0.96) for m in MODELS])
    pruning = []
    for model, (acc_val, acc_sketch) in ACCURACY.items():
        for order in ("singular", "random"):
            for fraction in (0.0, 0.5, 0.9):
                keep = 1.0 - fraction * (0.3 if order == "singular" else 0.9)
                pruning += [PruningRow(model, order, fraction, "val", acc_val * keep, ER[model] * keep),
                            PruningRow(model, order, fraction, "sketch", acc_sketch * keep, ER[model] * keep)]
    results.write(PruningRow, pruning)
    # the study uses the paper's one-sided AP; the both variant counts 2 more concepts and twice the polysemanticity
    results.write(ConceptRow, [ConceptRow(m, basis, 8, 40, len(c) + (basis == "neuron"), 1.25, 0.9, 2.5, "positive",
                                          len(c) + (basis == "neuron"), 1.25, 2.5, len(c) + 2 + (basis == "neuron"),
                                          2.5, 5.0)
                               for m, c in CONCEPTS.items() for basis in ("singular", "neuron")])
    results.write(ConceptThresholdRow, [ConceptThresholdRow(m, "singular", t, len(c) + i, 1.25 - 0.25 * i,
                                                            2.5 - 0.25 * i, "positive", len(c) + i, 1.25 - 0.25 * i,
                                                            2.5 - 0.25 * i, len(c) + 2 + i, 2.5 - 0.25 * i,
                                                            5.0 - 0.25 * i)
                                        for m, c in CONCEPTS.items() for i, t in enumerate((0.95, 0.9, 0.85))])
    results.record(ConceptRow, [InputRecord(m, "broden", f"key-{m}-broden", 500) for m in CONCEPTS],
                   {"threshold": 0.9, "concept name": XSS})
    from robustsig.study.analyses.atlas import AtlasConceptRow, AtlasDirectionRow, AtlasImageRow

    results.write(AtlasDirectionRow, [AtlasDirectionRow(m.model, 0, 1, 0.5, 6.5) for m in MODELS])
    results.write(AtlasImageRow, [AtlasImageRow(m.model, 0, 1, "val", f"/data/val/{XSS}.jpg", 1.5, "")
                                  for m in MODELS])  # no thumbnail: the page names the image
    results.write(AtlasConceptRow, [AtlasConceptRow(m.model, 0, 1, "sky", "scene", 0.93) for m in MODELS])
    results.write(ConceptTopRow, [ConceptTopRow("rn50-oa-zs", "singular", 0, 1, XSS, "object", 0.97),
                                  ConceptTopRow("rn50-oa-zs", "singular", 0, 2, "sky", "scene", 0.93),
                                  ConceptTopRow("vit-oa-zs", "singular", 3, 1, "50%_a&b", "texture", 0.91)])
    results.write(VennRow, [VennRow(m, "singular", c, "object") for m, cs in CONCEPTS.items() for c in sorted(cs)]
                  + [VennRow(m, "neuron", c, "object") for m, cs in CONCEPTS.items() for c in sorted(cs | {"wood"})])
    layers = ["layer1", "layer2", "layer3"]
    results.write(CkaRow, [CkaRow("rn50-oa-zs", "rn50-oa-ft", la, lb, 1.0 - 0.1 * abs(i - j) - 0.05 * i - drop, name,
                                  "minibatch")
                           for name, drop in CKA_SETS.items()
                           for i, la in enumerate(layers) for j, lb in enumerate(layers)]
                  + [CkaRow("vit-oa-zs", "rn50-oa-zs", la, lb, 0.5 + 0.1 * i - drop, name, "minibatch")
                     for name, drop in CKA_SETS.items()
                     for i, (la, lb) in enumerate(zip(["b0", "b1"], ["layer1", "layer3"]))])
    results.write(WiseFtRow, [WiseFtRow("rn50-oa", a, 0.598 + 0.16 * a, 0.331 - 0.08 * a, 0.08 - 0.1 * a,
                                        41.0 - 34 * a, 4 - 2 * round(a)) for a in (0.0, 0.5, 1.0)])
    results.write(WiseFtSignatureRow, [WiseFtSignatureRow("rn50-oa", a, name, 41.0 - 34 * a + 5 * shift, 100)
                                       for a in (0.0, 0.5, 1.0) for name, shift in (("val", 0), ("sketch", 1))])
    from robustsig.study.analyses.predict_er import predict_er_tables
    from robustsig.study.analyses.concepts.significance import ConceptSignificanceRow
    from robustsig.study.analyses.predict_er import PredictErOptions

    results.write(ConceptSignificanceRow, [ConceptSignificanceRow(m, "singular", 40, len(c), 1.5, len(c) - 1, len(c),
                                                                  0.05, 1000, 0.9, "positive")
                                           for m, c in CONCEPTS.items()])
    from robustsig.study.analyses.predict_er import LabelFreeRow
    from robustsig.study.analyses.layer_kurtosis import LayerKurtosisRow
    from robustsig.study.analyses.lowrank import LowRankRow

    layers = ["block0", "block1", "block2"]
    results.write(LabelFreeRow, [LabelFreeRow(m, method, d, acc - 0.05, acc) for m, accs in ACCURACY.items()
                                 for method in ("doc", "atc-maxprob") for d, acc in zip(("v2", "sketch"), accs[1:])])
    results.write(LayerKurtosisRow, [LayerKurtosisRow(m.model, "val", layer, i / 2, 3.0 + i * (m.kind == "zero-shot"),
                                                      i, "mean", 64) for m in MODELS for i, layer in enumerate(layers)])
    predict_er_tables(results, PredictErOptions(resamples=100), write=True)  # its layer profile reads the rows above
    results.write(LowRankRow, [LowRankRow("rn50-oa-zs", order, f, d, 0.6 - f / 2, 0.05 - f / 10, int(1e6 * (1 - f)),
                                          1 - f, 1 - f) for order in ("importance", "singular")
                               for f in (0.0, 0.5) for d in ("val", "v2")])
    from robustsig.study.analyses.atlas import AtlasConceptRow, AtlasDirectionRow, AtlasImageRow

    results.write(AtlasDirectionRow, [AtlasDirectionRow(m, d, rank, 0.5 / rank, 8.0 / rank)
                                      for m in ACCURACY for rank, d in enumerate((0, 3), 1)])
    results.write(AtlasImageRow, [AtlasImageRow(m, d, rank, name, f"/data/{name}/{rank}<img src=x onerror=alert(1)>.jpg", 2.0 - rank, "")
                                  for m in ACCURACY for d in (0, 3) for name in ("val", "broden")
                                  for rank in (1, 2)])
    results.write(AtlasConceptRow, [AtlasConceptRow(m, d, rank, concept, "texture", 0.95 - 0.1 * rank)
                                    for m, concepts in CONCEPTS.items() for d in (0, 3)
                                    for rank, concept in enumerate(sorted(concepts), 1)])
    from robustsig.study.analyses.noclip import NoClipRow

    # rn50-yf-zs plays NoCLIP (App. F) against the zero-shot models of its backbone
    results.write(NoClipRow, [NoClipRow(m, "noclip" if m == "rn50-yf-zs" else "compared", ACCURACY[m][0], ER[m],
                                        KURTOSIS[m], len(CONCEPTS[m]), 1, 6.5) for m in ("rn50-yf-zs", "rn50-oa-zs")])
    return results
