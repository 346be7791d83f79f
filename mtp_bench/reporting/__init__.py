"""Reporting: result files, provenance, pairing, text and HTML reports, compare, gate.

May import: mtp_bench.api, mtp_bench.models (devices in words), mtp_bench.scoring.
"""
