"""The embedded demo's data and study config: real packaged photos turned into a labelled in-distribution set,
shifted versions of it and a Broden-format concept set (:func:`build_demo_data`), and the study that runs the
demo's model pool on them (:func:`demo_config`). See ``provenance.md`` in a built folder for what the data is.

>>> from robustsig.demo import build_demo_data, demo_config     # doctest: +SKIP
>>> data = build_demo_data("robustsig-demo/data")               # doctest: +SKIP
>>> config = demo_config(data, "robustsig-demo")                # doctest: +SKIP
"""

from robustsig.demo.build import SIZES, DemoData, DemoSize, build_demo_data
from robustsig.demo.config import demo_config

__all__ = ["SIZES", "DemoData", "DemoSize", "build_demo_data", "demo_config"]
