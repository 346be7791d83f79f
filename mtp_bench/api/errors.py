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


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a mistyped `name`, else ''.

    >>> did_you_mean("humanevl", ["humaneval", "mbpp", "gsm8k"])
    " (did you mean 'humaneval'?)"
    >>> did_you_mean("zzz", ["humaneval", "mbpp"])
    ''
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class MissingPackageError(UserError):
    """A Python package a feature needs is not installed; the message names the `pip install` that fixes it."""


def require_packages(packages: tuple[str, ...], purpose: str, pip: str | None = None) -> None:
    """Raise MissingPackageError naming the `pip install` when any of `packages` (import names)
    cannot be imported; `pip` is the install line when it is not `pip install <the missing ones>`.

    >>> require_packages(("json",), "reading JSON")
    >>> try:
    ...     require_packages(("no_such_pkg_xyz",), "a test")
    ... except MissingPackageError as e:
    ...     print(e)
    a test needs the Python package no_such_pkg_xyz, which is not installed: pip install no_such_pkg_xyz
    """
    import importlib.util

    def missing(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a parent package that fails, or a module set to None in sys.modules
            return True

    absent = [p for p in packages if missing(p)]
    if absent:
        what = "package " + absent[0] if len(absent) == 1 else "packages " + " and ".join(absent)
        raise MissingPackageError(f"{purpose} needs the Python {what}, which {'is' if len(absent) == 1 else 'are'} "
                                  f"not installed: {pip or 'pip install ' + ' '.join(absent)}")
