"""Scoring: metrics, statistics, pass@k, code extraction, EvalPlus checks."""
