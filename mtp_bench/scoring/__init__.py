"""Scoring: metrics (pure functions), statistics, pass@k, code extraction, EvalPlus checks.

May import: mtp_bench.api, mtp_bench.generation, mtp_bench.execution.
"""
