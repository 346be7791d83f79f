"""The CLI subcommands, one module each (plus bench/ and repro/): `add_arguments(parser)` and
`main(args)`, listed in mtp_bench/cli.py.

May import: every layer; the only layer that imports mtp_bench.evals.
"""
