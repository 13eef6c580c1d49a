"""Reading YAML that a user (or anyone) wrote: safe loading, and aliases within a small bound.

Every YAML file robustsig reads (study configs, training recipes, ``-O KEY=VALUE`` dataset options) goes through
:class:`SafeLoader`: ``yaml.SafeLoader`` (plain data only, never objects) that also bounds what aliases repeat.
An alias (``*name``) repeats an anchored value (``&name``); ``yaml.safe_dump`` writes them for a value shared
by several keys, so they are accepted. But a few hundred bytes of nested aliases (a "billion laughs" file) expand
to billions of values once a config is validated or walked: the loader counts the values each alias repeats
(the nested ones included) and refuses the file, while parsing and before anything is built, once the aliases of
one document repeat more than :data:`MAX_ALIAS_VALUES` values. A document nested deeper than :data:`MAX_DEPTH`
lists and mappings is refused in the same way, before Python's recursion limit is reached.

>>> safe_load("shared: &s {kind: folder}\\nother: *s", "study.yaml")
{'shared': {'kind': 'folder'}, 'other': {'kind': 'folder'}}
>>> safe_load("a: &a [x, x, x, x, x, x, x, x, x, x]\\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\\n"
...           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\\n"
...           "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]", "bomb.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
robustsig.errors.InputError: bomb.yaml is not valid YAML (line 4, column 36): the aliases up to *c repeat more ...
"""

from __future__ import annotations

from typing import Any

import yaml

from robustsig.errors import InputError

MAX_ALIAS_VALUES = 10_000
"""The most values (scalars, lists and mappings, counted in full) the aliases of one YAML document may repeat; a
study config with every model and dataset entry shared through aliases stays far below it."""
MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a YAML document may have (a study config nests six deep). PyYAML
builds nested values recursively, so 100,000 nested brackets would end in a RecursionError."""


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases repeat more than :data:`MAX_ALIAS_VALUES`
    values (see the module notes)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._repeated = 0
        self._sizes: dict[int, int] = {}
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.check_event(yaml.AliasEvent):
            if self._depth >= MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"lists and mappings nested more than {MAX_DEPTH} deep; a config is never nested "
                                "that deep: check the brackets", self.peek_event().start_mark)
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        event = self.peek_event()
        node = super().compose_node(parent, index)  # the anchored node (an undefined alias is an error)
        self._repeated += self._size(node)
        if self._repeated > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"the aliases up to *{event.anchor} repeat more than {MAX_ALIAS_VALUES} values (a YAML "
                            "alias bomb?); write the values out, or share fewer of them through aliases",
                event.start_mark)
        return node

    def _size(self, node: yaml.Node) -> int:
        """How many values ``node`` stands for, nested aliases expanded (memoised per node)."""
        size = self._sizes.get(id(node))
        if size is None:
            self._sizes[id(node)] = 1  # a recursive alias (a cycle, not an expansion) counts once
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            size = self._sizes[id(node)] = 1 + sum(self._size(child) for child in children)
        return size


def safe_load(text: str, source: str, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Parse ``text`` with ``loader`` (a :class:`SafeLoader`); a YAML error (an alias bomb included) becomes an
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
