"""The reference multi-token-prediction transformer, its trainer, data and checkpoints."""
