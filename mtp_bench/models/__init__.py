"""Model adapters: every checkpoint format behind one Model protocol (`loader.load` is
`mtp_bench.load`).

May import: mtp_bench.api, mtp_bench.reference_model.
"""
