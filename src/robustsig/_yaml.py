"""Reading YAML that a user (or anyone) wrote: safe loading, and no aliases.

Every YAML file robustsig reads (study configs, training recipes, ``-O KEY=VALUE`` dataset options) goes through
:class:`SafeLoader`: ``yaml.SafeLoader`` (plain data only, never objects) that also refuses aliases (``*name``).
An alias repeats an anchored value (``&name``), so a few hundred bytes of nested aliases (a "billion laughs"
file) expand to billions of values once a config is validated or walked; robustsig's configs never need one,
so the first alias is refused while parsing, before anything is built.

>>> safe_load("models: [a, b]", "study.yaml")
{'models': ['a', 'b']}
>>> safe_load("a: &x [1]\\nb: *x", "study.yaml")
Traceback (most recent call last):
    ...
robustsig.errors.InputError: study.yaml is not valid YAML (line 2, column 4): found the alias *x; ...
"""

from __future__ import annotations

from typing import Any

import yaml

from robustsig.errors import InputError


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (see the module notes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}; robustsig does not accept YAML aliases (a few bytes "
                            "of nested aliases can expand to gigabytes): write the value out in full",
                event.start_mark)
        return super().compose_node(parent, index)


def safe_load(text: str, source: str, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Parse ``text`` with ``loader`` (a :class:`SafeLoader`); a YAML error (an alias included) becomes an
    :class:`~robustsig.errors.InputError` naming ``source`` and the line and column.

    Args:
        text: the YAML document.
        source: how messages name it (``study.yaml``, ``recipe file 'r.yaml'``).
        loader: :class:`SafeLoader` or a subclass of it.
    """
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        context = getattr(error, "context", None)
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(f"{source} is not valid YAML{where}: {context + ', ' if context else ''}{problem}") from None
