"""Tasks and data for temporal_sigprop: a registry of named tasks and their datasets.

Data only: nothing here imports ``temporal_sigprop`` or ``baselines``.

    from tasks import get_task, list_tasks
    data = get_task("cue_recall:delay=60,n_train=2000", seed=0)
    x, y = data.train.tensors      # x float32 [N, T, *F], y int64 [N] or [N, T]

Offline: ``mnist1d``, ``cue_recall``, ``cue_recall_steps``, ``pulse_count``, ``video_digits``,
``audio_keywords``, and the UCR/UEA archive sets that ship with aeon (``uea:JapaneseVowels``,
``uea:BasicMotions``, ``ucr:GunPoint``, ...; see ``tasks.archive``); from disk (``--download``
where allowed): ``smnist``, ``psmnist``, ``moving_mnist_cls``, ``speech_commands``, ``shd``, any
other archive set as ``uea:NAME`` / ``ucr:NAME``; and ``file:PATH.npz`` for a user's arrays.
"""
from .common import DataError
from .registry import get_task, list_tasks, parse_task_spec, register_task, TaskEntry, task_names

TASK_NAMES = tuple(task_names())


def __getattr__(name):
    # TaskData lives with the tensors (tasks.base, which imports torch); importing the package
    # for its names (the command line, ``tsp tasks``) must not load torch.
    if name == "TaskData":
        from .base import TaskData
        return TaskData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "get_task",
    "list_tasks",
    "TASK_NAMES",
    "DataError",
    "TaskData",
    "parse_task_spec",
    "register_task",
    "TaskEntry",
]
