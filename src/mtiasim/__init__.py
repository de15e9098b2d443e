"""mtiasim: an open, bit-accurate and timed model of Meta's MTIA inference accelerator."""

from mtiasim.errors import (
    CapacityError,
    ConfigError,
    MtiasimError,
    ProgramError,
    UnsupportedOperatorError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "CapacityError",
    "ConfigError",
    "MtiasimError",
    "ProgramError",
    "UnsupportedOperatorError",
    "UsageError",
    "__version__",
]
