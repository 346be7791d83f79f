"""Typed errors a user can cause. The CLI prints their message as one line and exits 2.

This module imports nothing from the rest of the package, so every layer (the reference
model included) may raise these.
"""


class UserError(Exception):
    """Bad input from the user: a path, a name, a config, a data file. Never a bug."""


class ConfigError(UserError, ValueError):
    """An unknown key, preset, head variant or out-of-range value."""


class CheckpointError(UserError):
    """A missing, corrupted or inconsistent checkpoint."""


class DataError(UserError):
    """A missing or malformed dataset, corpus or JSONL file."""


class UnknownNameError(UserError, KeyError):
    """An unknown evaluator, suite, preset or format; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
