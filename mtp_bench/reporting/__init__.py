"""Reporting: result files, provenance, pairing, text and HTML reports, compare, gate."""
