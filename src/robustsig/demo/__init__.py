"""The embedded demo: real packaged photos turned into a labelled in-distribution set, shifted versions of it, a
training split and a Broden-format concept set (:func:`build_demo_data`), MobileNetV2 finetuned on the training
split (:func:`finetune_demo_model`), the study that runs the demo's model pool on them (:func:`demo_config`), and
all of it in one call (:func:`run_demo`, the ``robustsig demo`` command). See ``provenance.md`` in a built folder
for what the data is.

>>> from robustsig.demo import run_demo                 # doctest: +SKIP
>>> run = run_demo("robustsig-demo", size="small")      # doctest: +SKIP
>>> run.ok, run.summary.report                          # doctest: +SKIP
"""

from robustsig.demo.build import SIZES, DemoData, DemoSize, build_demo_data
from robustsig.demo.config import demo_config
from robustsig.demo.finetune import finetune_demo_model
from robustsig.demo.run import run_demo

__all__ = ["SIZES", "DemoData", "DemoSize", "build_demo_data", "demo_config", "finetune_demo_model", "run_demo"]
