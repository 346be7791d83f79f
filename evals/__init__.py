"""Evaluators, one a file. Importing this package registers every built-in evaluator."""
