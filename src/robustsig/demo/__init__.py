"""The embedded demo: real ImageNet validation photos with their labels as the in-distribution set, ImageNet-C
corruptions and renditions of them, a training split of other photos and a Broden-format concept set of real
labelled photos (:func:`build_demo_data`), real models finetuned on the training split (:func:`finetune_demo_model`),
the study that runs the demo's 14-model pool on them (:func:`demo_config`), and all of it in one call
(:func:`run_demo`, the ``robustsig demo`` command). See ``provenance.md`` in a built folder for what the data is.

>>> from robustsig.demo import run_demo                 # doctest: +SKIP
>>> run = run_demo("robustsig-demo", size="small")      # doctest: +SKIP
>>> run.ok, run.summary.report                          # doctest: +SKIP
"""

from robustsig.demo.build import SIZES, DemoData, DemoSize, build_demo_data
from robustsig.demo.config import demo_config
from robustsig.demo.finetune import finetune_demo_model
from robustsig.demo.run import run_demo

__all__ = ["SIZES", "DemoData", "DemoSize", "build_demo_data", "demo_config", "finetune_demo_model", "run_demo"]
