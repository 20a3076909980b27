"""Errors that the CLI turns into a message and exit code 2 (never a traceback)."""


class ConfigError(ValueError):
    """An unknown name or an invalid option; the message lists the valid choices."""


class IncompatibleError(ConfigError):
    """A method that cannot run on a model (and why); reports show it as "n/a — why"."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
