"""Hardware description: typed chip configurations with provenance, the peaks they imply, and the cards and
servers that hold the chips."""

from mtiasim.hw.chip import Chip, Provenance, load_chip, load_chip_file, preset_names
from mtiasim.hw.peaks import Peak, peak, peaks
from mtiasim.hw.server import Server, load_server, server_preset_names

__all__ = [
    "Chip",
    "Peak",
    "Provenance",
    "Server",
    "load_chip",
    "load_chip_file",
    "load_server",
    "peak",
    "peaks",
    "preset_names",
    "server_preset_names",
]
