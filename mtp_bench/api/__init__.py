"""The contracts every layer builds on: errors, file helpers, protocols, the evaluator registry."""
