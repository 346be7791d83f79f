"""The package version, in one place (the trainer records it too)."""

__version__ = "0.1.0"
