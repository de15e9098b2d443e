"""The one exception family of mtiasim.

Every message is one line that says what went wrong, where (config key, op, PE, file) and, where it helps,
what to do. The CLI prints it as is and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class MtiasimError(Exception):
    """Base class of every error mtiasim raises on purpose."""


class ConfigError(MtiasimError):
    """A chip preset or configuration value is unknown, missing or impossible."""


class UsageError(MtiasimError):
    """An argument given to the API or the CLI is invalid (shape, dtype, placement, name)."""


class CapacityError(MtiasimError):
    """A buffer or tensor does not fit the memory it was given (local store, SRAM, DRAM)."""


class ProgramError(MtiasimError):
    """A command program is ill-formed: bad circular-buffer use, deadlock, inconsistent multicast."""


class UnsupportedOperatorError(MtiasimError):
    """An operator has no kernel on the simulated chip."""


class NumericsWarning(UserWarning):
    """A run lost information the numbers do not show: NaN/Inf made finite by int8, float overflow, int8
    saturation beyond calibration, non-finite calibration data (see docs/numerics.md)."""
