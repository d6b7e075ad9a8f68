"""Errors raised while resolving models."""


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found locally or offline; the message says how to get it."""
