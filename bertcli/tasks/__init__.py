"""Tasks for the shared training loop (bertcli.train): pretraining and the fine-tuning tasks.

Fine-tuning tasks are discovered: every module in this package that defines ``TASKS`` (the
``--task`` names it serves), ``METRICS`` (task -> dev metric names, the first being the default
for picking the best model), ``LOWER_IS_BETTER``, ``REQUIRED`` (task -> option names the task
needs) and ``build_task(opts) -> bertcli.train.Task`` is a ``bertcli finetune --task``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType


@cache
def finetune_tasks() -> dict[str, ModuleType]:
    """``--task`` name -> the module that implements it, in a stable order."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "pretraining":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "build_task", None)):
            for name in module.TASKS:
                found[name] = module
    order = ("classification", "regression")
    return {k: found[k] for k in sorted(found, key=lambda k: (order.index(k) if k in order else len(order), k))}


def task_module(name: str) -> ModuleType:
    """The module implementing ``--task name``; a ConfigError lists the valid names."""
    from bertcli.errors import ConfigError

    tasks = finetune_tasks()
    if name not in tasks:
        raise ConfigError(f"--task '{name}': valid values: {', '.join(tasks)}")
    return tasks[name]
