"""The reference multi-token-prediction transformer, its trainer, data and checkpoints.

May import: nothing of the framework but mtp_bench.api.errors and the file helpers
(api.atomic, api.jsonl, api.files, api.paths, api.version). Loading checkpoints as framework
models is mtp_bench.models'.
"""
