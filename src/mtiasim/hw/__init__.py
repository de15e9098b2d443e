"""Hardware description: typed chip configurations with provenance, and the peaks they imply."""

from mtiasim.hw.chip import Chip, Provenance, load_chip, load_chip_file, preset_names
from mtiasim.hw.peaks import Peak, peak, peaks

__all__ = ["Chip", "Peak", "Provenance", "load_chip", "load_chip_file", "peak", "peaks", "preset_names"]
