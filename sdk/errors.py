"""Exceptions raised by distilflow. Each message names the place at fault and the fix."""


class DistilflowError(Exception):
    """Base class: a problem a user can act on. The CLI prints it as one line and exits 1."""


class ConfigError(DistilflowError):
    """A configuration value is missing, unknown or out of range."""


class RecordError(DistilflowError):
    """A JSONL record is malformed; the message carries ``file:line``."""


class IncompleteOutputError(DistilflowError):
    """An upstream stage output has no completion marker."""


class BackendError(DistilflowError):
    """A teacher, judge or model backend could not be used."""


class StorageError(DistilflowError):
    """An object store cannot be used as configured (a missing bucket, a wrong endpoint)."""
