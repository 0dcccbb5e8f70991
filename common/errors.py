"""Errors that mean "the user gave us something wrong" (as opposed to a bug).

The CLI turns these into a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations


class FedshieldError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class ConfigError(FedshieldError):
    """A configuration value (CLI flag, scenario file, run config) is invalid."""


class DataError(FedshieldError):
    """A data file is missing, unreadable, or has invalid contents."""
