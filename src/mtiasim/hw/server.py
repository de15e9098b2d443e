"""The system around the chips: a card (a chip with its deployed memory and power) and a server (cards behind a
PCIe switch tree, host CPU sockets, host memory, the platform's power budget).

Server presets are TOML files under `presets/servers/`, read with the chip presets' machinery: every leaf is
``{value, provenance, source|note}``, unknown keys and impossible values are one-line ConfigErrors naming the key.

The switch tree: `topology.sockets` host CPU sockets, each with a root link (`host_link_gbps`) to its share of
`topology.switches` leaf PCIe switches; each switch has an uplink (`switch_uplink_gbps`) and an equal share of
the cards, each on its own link (the card's chip `host.bandwidth_gbps`). Links are full duplex: every link is
one resource per direction. The serving simulator (`mtiasim.serve`) makes each of them, the host CPU cores and
the host memory a shared resource.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from mtiasim.errors import ConfigError
from mtiasim.hw.chip import (
    Chip,
    Provenance,
    Section,
    flatten_preset,
    format_validation_error,
    load_chip,
    read_toml,
)


class CardSpec(Section):
    chip: str  # a chip preset name
    dram_bytes: PositiveInt  # LPDDR5 on the card as deployed (may be less than the chip supports)
    power_w: PositiveFloat  # the card's power budget (chip, memory, board)


class Topology(Section):
    cards: PositiveInt
    sockets: PositiveInt  # host CPU sockets, each the root of its own part of the switch tree
    switches: PositiveInt  # leaf PCIe switches, each holding an equal share of the cards
    host_link_gbps: PositiveFloat  # a socket's root link to its switches, GB/s per direction
    switch_uplink_gbps: PositiveFloat  # a leaf switch's uplink, GB/s per direction
    peer_gbps: PositiveFloat  # device-to-device (PCIe peer-to-peer) bandwidth per card, GB/s

    @model_validator(mode="after")
    def _even_tree(self) -> Topology:
        if self.cards % self.switches:
            raise ValueError(f"cards ({self.cards}) must be a multiple of switches ({self.switches})")
        if self.switches % self.sockets:
            raise ValueError(f"switches ({self.switches}) must be a multiple of sockets ({self.sockets})")
        return self


class HostSpec(Section):
    cores: PositiveInt  # host CPU cores serving queries (all sockets)
    memory_bytes: PositiveInt
    memory_gbps: PositiveFloat
    preprocess_us_per_query: float = Field(ge=0)  # request decoding and feature assembly, one core
    postprocess_us_per_query: float = Field(ge=0)  # scattering the scores back to the request, one core
    network_gbps: PositiveFloat  # the server's network, Gbit/s


class ServerPower(Section):
    server_power_w: PositiveFloat


SERVER_SECTIONS: dict[str, type[Section]] = {
    "card": CardSpec,
    "topology": Topology,
    "host": HostSpec,
    "power": ServerPower,
}


class Server(BaseModel):
    """A validated server configuration; `provenance` maps 'section.key' to its origin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    card: CardSpec
    topology: Topology
    host: HostSpec
    power: ServerPower
    provenance: dict[str, Provenance] = Field(default_factory=dict, repr=False)
    # a what-if chip on every card (`mtiasim serve --set`, `with_card_chip`); None: the preset's, as `chip()` says
    card_chip: Chip | None = Field(default=None, repr=False, exclude=True)

    @model_validator(mode="after")
    def _cards_within_budget(self) -> Server:
        if self.topology.cards * self.card.power_w > self.power.server_power_w:
            raise ValueError(
                f"{self.topology.cards} cards x {self.card.power_w:g} W exceed server_power_w "
                f"({self.power.server_power_w:g} W)"
            )
        return self

    # ---- the attributes the sharding planner reads (serve/sharding.py)
    @property
    def cards(self) -> int:
        return self.topology.cards

    @property
    def card_memory_bytes(self) -> int:
        """Device DRAM per card that tables may use: the card's LPDDR5 as deployed (or as a what-if chip sets it)."""
        return self.card.dram_bytes if self.card_chip is None else self.card_chip.dram.bytes

    @property
    def card_sram_bytes(self) -> int:
        return self.chip().sram.bytes

    # ---- the switch tree
    @property
    def cards_per_switch(self) -> int:
        return self.topology.cards // self.topology.switches

    def switch_of(self, card: int) -> int:
        return card // self.cards_per_switch

    def socket_of(self, card: int) -> int:
        return self.switch_of(card) // (self.topology.switches // self.topology.sockets)

    @property
    def non_card_power_w(self) -> float:
        """The platform's power beyond its cards (host CPU and memory, switches, NIC, fans), taken as constant:
        the published server budget less the cards' budgets."""
        return self.power.server_power_w - self.topology.cards * self.card.power_w

    def with_card_chip(self, chip: Chip) -> Server:
        """This server with `chip` (e.g. `chip()` with `--set` values) on every card."""
        return self.model_copy(update={"card_chip": chip})

    def chip(self) -> Chip:
        """The chip preset as it sits on this server's cards: its DRAM the card's, its card and server power
        the server's (provenance `derived`, from this server preset); a what-if card chip as given."""
        if self.card_chip is not None:
            return self.card_chip
        chip = load_chip(self.card.chip)
        wanted = {
            "dram.bytes": self.card.dram_bytes,
            "power.card_power_w": self.card.power_w,
            "power.server_power_w": self.power.server_power_w,
            "power.cards_per_server": self.topology.cards,
        }
        changed = {k: v for k, v in wanted.items() if chip.value(k) != v}
        return chip.with_values(changed, "derived", where=f"server {self.name}: ") if changed else chip


def server_preset_names() -> list[str]:
    folder = resources.files("mtiasim.hw").joinpath("presets", "servers")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_server(name: str) -> Server:
    """A shipped server preset by name ('yosemite-v3', 'grand-teton-2i') or a server TOML file by path."""
    if not isinstance(name, str):
        raise ConfigError(f"server: expected a preset name or a .toml file name, got {name!r}")
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{name}: no such server file")
        return _load(read_toml(path, name), name)
    names = server_preset_names()
    if name not in names:
        raise ConfigError(f"unknown server {name!r} (known: {', '.join(names)}; or give a .toml file)")
    path_ = resources.files("mtiasim.hw").joinpath("presets", "servers", f"{name}.toml")
    return _load(read_toml(path_, f"{name}.toml"), f"{name}.toml")


def _load(doc: dict[str, Any], where: str) -> Server:
    meta, values, prov = flatten_preset(doc, where, SERVER_SECTIONS, meta_keys=("name", "description"))
    for field in ("name", "description"):
        if field not in meta:
            raise ConfigError(f"{where}: {field}: missing key")
    try:
        server = Server.model_validate({**meta, **values, "provenance": prov})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, SERVER_SECTIONS)) from None
    server.chip()  # the card's chip preset exists and takes the card's values
    return server
