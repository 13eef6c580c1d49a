
OPTIONS: dict[str, object] = {}
"""Command-line options of ``python -m benchmarks`` (``scale``, ``keep``), for the modules that read them."""
