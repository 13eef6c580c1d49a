"""The plan of a study run: a small DAG of tasks, in an order that respects it.

Nodes are extraction steps (one per subject and dataset an enabled analysis reads), AP steps (one per subject and
basis probed on Broden), and analysis steps (one per model, CKA pair or Wise-FT pair; one for the Venn overlaps).
Edges are the ``needs`` of each task. Each analysis module adds its tasks through a :class:`Planner`, which adds
the extraction steps a task needs before it (each once), so the plan's order is a topological order. Tasks are
added model by model (a model's extractions, then its analyses), then the pair analyses: one model is built at a
time and is done before the next is loaded.

Which stores hold layers is decided on the *whole* config (CKA pairs), not on the ``--only`` selection, so that
``--only kurtosis`` never re-extracts a CKA model's store without its layers.

:func:`robustsig.study.registry.build_plan` builds the plan of a config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from robustsig.errors import InputError
from robustsig.study.stores import ExtractTask, LayerRequest
from robustsig.study.subjects import Subject
from robustsig.study.tasks import Task


class Planner:
    """Collects tasks in a dependency-respecting order.

    Args:
        layers: ``(model, dataset) -> layers`` its store must hold (from the whole config's CKA pairs).
        pooling: how layer outputs are pooled.
    """

    def __init__(self, layers: Mapping[tuple[str, str], LayerRequest] | None = None, pooling: str = "auto") -> None:
        self._layers = dict(layers or {})
        self._pooling = pooling
        self._tasks: dict[str, Task] = {}
        self.origin = "robustsig"
        """The origin given to the tasks added from now on (the registry sets it while a plugin plans)."""

    @property
    def pooling(self) -> str:
        """How the stores pool layer outputs in this plan."""
        return self._pooling

    def store(self, subject: Subject, dataset: str) -> str:
        """The id of the extraction step of ``subject`` on ``dataset`` (added on first request)."""
        layers = self._layers.get((subject.model, dataset), ()) if subject.model is not None else ()
        return self.add(ExtractTask(subject, dataset, layers, self._pooling))

    def add(self, task: Task) -> str:
        """Add ``task`` (once: a task with the same id is kept); its needs must already be in the plan."""
        missing = [need for need in task.needs if need not in self._tasks]
        if missing:
            raise InputError(f"task {task.id} needs {missing}, which are not planned before it")
        if task.id not in self._tasks:
            if self.origin != "robustsig":
                task.origin = self.origin
            self._tasks[task.id] = task
        return task.id

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def tasks(self) -> list[Task]:
        return list(self._tasks.values())
