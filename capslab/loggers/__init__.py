"""Loggers: where a run's records go besides ``metrics.jsonl`` (a plugin kind, ``register_loggers``)."""

from capslab.loggers.base import Logger, LoggerParams, flat, scalars

__all__ = ["Logger", "LoggerParams", "flat", "scalars"]
