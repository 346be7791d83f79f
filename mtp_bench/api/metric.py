"""`Metric`: one aggregate number with its uncertainty and its direction, as result files store it.

Every evaluator returns its metrics as `Metric`s (built by the pure functions of
`mtp_bench.scoring.metrics`); reports, deltas and gates read `higher_is_better` from here and never
guess it. Imports only the standard library.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One aggregate number with its uncertainty. `higher_is_better` lives next to the value
    so that reports, deltas and gates never have to guess the direction."""

    value: float
    stderr: float | None  # standard error of `value`; None when it has none (n=1, a timing total)
    ci95: tuple[float, float] | None  # 95% interval; None when stderr is None
    n: int  # number of independent units behind the value (problems, prompts, ...)
    higher_is_better: bool

    def __post_init__(self) -> None:
        # normalise numpy scalars to plain Python types; reject anything that is not a number
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"Metric.value must be a real number, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))
        if self.stderr is not None:
            object.__setattr__(self, "stderr", float(self.stderr))
        if self.ci95 is not None:
            object.__setattr__(self, "ci95", (float(self.ci95[0]), float(self.ci95[1])))
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise TypeError(f"Metric.n must be a count (int >= 0), got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if type(self.higher_is_better).__name__ not in ("bool", "bool_"):  # bool or numpy.bool_
            raise TypeError(f"Metric.higher_is_better must be a bool, got {self.higher_is_better!r}")
        object.__setattr__(self, "higher_is_better", bool(self.higher_is_better))

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _json_float(self.value),
            "stderr": _json_float(self.stderr),
            "ci95": None if self.ci95 is None else [_json_float(self.ci95[0]), _json_float(self.ci95[1])],
            "n": int(self.n),
            "higher_is_better": bool(self.higher_is_better),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metric:
        keys = {"value", "stderr", "ci95", "n", "higher_is_better"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"a metric needs exactly the keys {sorted(keys)}, got {d!r}")
        ci = d["ci95"]
        return cls(value=_unjson_float(d["value"]), stderr=_unjson_float(d["stderr"]),
                   ci95=None if ci is None else (_unjson_float(ci[0]), _unjson_float(ci[1])),
                   n=int(d["n"]), higher_is_better=bool(d["higher_is_better"]))


def _json_float(x: float | None) -> float | str | None:
    """JSON has no NaN/inf; write them as strings so result files stay strict JSON."""
    if x is None or math.isfinite(x):
        return x
    return str(x)  # "nan", "inf", "-inf"


def _unjson_float(x: Any) -> float | None:
    return None if x is None else float(x)
