"""Run the ``robustsig`` command line inside the test process."""

from __future__ import annotations

from robustsig.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``robustsig ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
