"""The task package's shared names that import nothing heavy: the error type and the allowed
kinds, label kinds and sources of a task.

The registry (``tsp tasks``, the check of a task spec) and the command line use these before
numpy or torch is imported; ``tasks.base`` re-exports them for the builders.
"""
from __future__ import annotations

__all__ = ["DataError", "KINDS", "LABEL_KINDS", "SOURCES"]

KINDS = ("sequence", "audio", "video")
LABEL_KINDS = ("sequence", "step")
SOURCES = ("offline", "download", "user")


class DataError(ValueError):
    """Bad or missing data.

    The message says which array or file is at fault, what was expected and how to fix it.
    The CLI turns it into exit status 2.
    """
