"""Importing the packages that only some tasks need, with an error that says what to do.

torchaudio is the one that breaks in practice: its compiled extension is built against a single
torch release, while its package metadata accepts any newer torch, so a resolver can install a
pair that does not load (``OSError: ... libtorchaudio.so: undefined symbol ...``). Only the audio
tasks compute with it, so only they import it, here; every other task runs without it, and the
failure becomes a :class:`DataError` (exit status 2 on the command line) naming the installed
versions and the fix instead of a traceback.

Installed versions are read from package metadata (``importlib.metadata``), which works whether
or not the package itself can be imported.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from .base import DataError

__all__ = ["installed_version", "load_torchaudio", "describe_load_error", "TORCHAUDIO_FIX"]

#: How to get back to a pair that loads: the project's lock pins one measured pair.
TORCHAUDIO_FIX = ("install the torch/torchaudio pair the project pins, e.g. "
                  "`pip install -c requirements.lock -e .` in the project folder "
                  "(or `pip install torch==2.11.0 torchaudio==2.11.0`); `tsp doctor` checks it")


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` from its metadata, or None if it is absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe_load_error(err: BaseException) -> str:
    """``Type: message`` of the innermost cause: a failed shared-library load wraps the linker's
    message ("undefined symbol: ...") in a vaguer one ("Could not load this library")."""
    while err.__cause__ is not None or (err.__context__ is not None
                                        and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


def load_torchaudio():
    """``import torchaudio``, or a DataError that names the versions installed and the fix.

    A missing torchaudio raises ImportError; one built for another torch raises OSError (its
    shared library does not link) or, in some releases, RuntimeError. All three end here.
    """
    try:
        return importlib.import_module("torchaudio")
    except (ImportError, OSError, RuntimeError) as err:
        detail = describe_load_error(err)
        torch_v = installed_version("torch") or "not installed"
        audio_v = installed_version("torchaudio") or "not installed"
        raise DataError(
            f"the audio tasks need torchaudio, which cannot be loaded ({detail}); installed: "
            f"torch {torch_v}, torchaudio {audio_v}. To fix: {TORCHAUDIO_FIX}") from None
