"""What goes on the compute device, for a VRAM budget.

A request runs in phases, each needing some units on the device with some working memory:

    lm         the 5 Hz LM (when used)                      its KV cache
    encode     VAE (source / timbre reference) + DiT unit   one encode window
    condition  text encoder + DiT unit                      the condition encoder's pass
    sample     DiT unit                                     cross-attention K/V, one layer's activations
    render     VAE                                          one decode tile

When every unit fits with the largest phase's working memory, all stay loaded ("together"). Otherwise the units
take turns: a phase loads only what it needs, and a streamable unit (the DiT's decoder layers, the LM's layers)
keeps as many layers resident as every phase it is in allows, streaming the rest through ``STREAM_SLOTS`` layer
buffers. The VAE tile is the largest of ``VAE_TILE_CHOICES`` that fits next to the VAE; when none does, the VAE
decodes on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import MEMORY_OVERHEAD, STREAM_SLOTS, VAE_ENCODE_WINDOW_CHOICES, VAE_TILE_CHOICES
from .estimates import GIB, UnitSize

UNIT_LABELS = {"text_encoder": "text encoder", "model": "DiT", "vae": "VAE", "lm": "LM"}


@dataclass(frozen=True)
class Phase:
    name: str
    units: tuple[str, ...]
    working: int  # bytes besides the weights


@dataclass(frozen=True)
class Residency:
    """How one unit sits on the device while it runs: ``resident`` of its ``layers`` streamable layers stay there
    (all of them for a unit placed whole)."""

    resident: int
    layers: int

    @property
    def streamed(self) -> int:
        return self.layers - self.resident


@dataclass(frozen=True)
class MemoryPlan:
    budget: int  # bytes
    together: bool  # every unit fits at once: nothing moves between phases
    residency: dict[str, Residency]
    peaks: dict[str, int]  # phase → estimated peak bytes on the device
    vae_tile: int | None  # decode tile length in latent frames; None = decode on the CPU
    vae_window: float | None  # encode window in seconds; None = encode on the CPU
    slots: int = STREAM_SLOTS
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return all(peak <= self.budget for peak in self.peaks.values())

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def streamed(self, unit: str) -> int:
        r = self.residency.get(unit)
        return 0 if r is None else r.streamed

    def describe(self) -> str:
        """One line: the budget, how the units share it, what streams, the VAE tile, the estimated peak."""
        parts = [f"VRAM budget {self.budget / GIB:.1f} GB", "all loaded" if self.together else "one unit at a time"]
        for unit, r in self.residency.items():
            if r.streamed:
                parts.append(f"{UNIT_LABELS.get(unit, unit)} {r.resident}/{r.layers} layers resident, "
                             f"{r.streamed} streamed")
        parts.append(f"VAE tile {self.vae_tile}" if self.vae_tile else "VAE on the CPU")
        parts.append(f"peak ~{self.peak / GIB:.1f} GB (estimate)" + ("" if self.fits else ", over the budget"))
        return " · ".join(parts)


def _phase_peak(phase: Phase, sizes: dict[str, UnitSize], residency: dict[str, Residency], slots: int) -> int:
    total = phase.working + MEMORY_OVERHEAD
    for unit in phase.units:
        size, r = sizes[unit], residency[unit]
        total += size.resident(r.resident) + (min(slots, r.streamed) * size.layer if r.streamed else 0)
    return total


def largest_fitting(choices, cost, room: int):
    """The first of ``choices`` (largest first) whose ``cost(choice)`` fits in ``room`` bytes, else None."""
    for choice in choices:
        if cost(choice) <= room:
            return choice
    return None


def plan_memory(budget: int, sizes: dict[str, UnitSize], phases: list[Phase], vae_decode_cost=None,
                vae_encode_cost=None, resident_layers: dict[str, int] | None = None, slots: int = STREAM_SLOTS,
                tile_limit: int | None = None) -> MemoryPlan:
    """The plan for ``budget`` bytes.

    ``sizes``: every unit by name; ``phases``: what each phase needs besides the VAE tiles (the ``render`` phase's
    working memory and the ``encode`` phase's window come from ``vae_decode_cost(tile)`` and
    ``vae_encode_cost(seconds)``); ``resident_layers``: a fixed count per streamable unit instead of the largest
    that fits (a manual override); ``tile_limit``: the largest decode tile wanted (the render settings').
    """
    resident_layers = resident_layers or {}
    notes = []
    tiles = VAE_TILE_CHOICES if tile_limit is None else sorted(
        {tile_limit, *(t for t in VAE_TILE_CHOICES if t < tile_limit)}, reverse=True)
    vae_weights = sizes["vae"].total if "vae" in sizes else 0
    room_vae = budget - vae_weights - MEMORY_OVERHEAD
    tile = largest_fitting(tiles, vae_decode_cost, room_vae) if vae_decode_cost else tiles[0]
    window = (largest_fitting(VAE_ENCODE_WINDOW_CHOICES, vae_encode_cost, room_vae) if vae_encode_cost
              else VAE_ENCODE_WINDOW_CHOICES[0])
    phases = [_with_vae(p, tile, window, vae_decode_cost, vae_encode_cost) for p in phases]

    whole = {u: Residency(s.layers, s.layers) for u, s in sizes.items()}
    weights = sum(s.total for s in sizes.values())
    working = max((p.working for p in phases), default=0)
    if weights + working + MEMORY_OVERHEAD <= budget and not any(
            resident_layers.get(u, s.layers) < s.layers for u, s in sizes.items()):
        peaks = {p.name: weights + p.working + MEMORY_OVERHEAD for p in phases}
        return MemoryPlan(budget, True, whole, peaks, tile, window, slots)

    residency = dict(whole)
    for unit, size in sizes.items():
        if not size.layers:
            continue
        if unit in resident_layers:
            n = max(0, min(int(resident_layers[unit]), size.layers))
        else:
            n = size.layers
            while n > 0 and any(_phase_peak(p, sizes, {**residency, unit: Residency(n, size.layers)}, slots) > budget
                                for p in phases if unit in p.units):
                n -= 1
        residency[unit] = Residency(n, size.layers)
    peaks = {p.name: _phase_peak(p, sizes, residency, slots) for p in phases}
    plan = MemoryPlan(budget, False, residency, peaks, tile, window, slots, tuple(notes))
    if not plan.fits:
        over = [f"{p} ~{b / GIB:.1f} GB" for p, b in peaks.items() if b > budget]
        plan = MemoryPlan(budget, False, residency, peaks, tile, window, slots,
                          (f"over the budget even with every layer streamed: {', '.join(over)}",))
    return plan


def _with_vae(phase: Phase, tile, window, decode_cost, encode_cost) -> Phase:
    """The VAE's working memory added to the phases that use it: a decode tile in ``render``, an encode window
    elsewhere (source, timbre reference); the VAE leaves the phase when it runs on the CPU."""
    if "vae" not in phase.units:
        return phase
    chosen, cost = (tile, decode_cost) if phase.name == "render" else (window, encode_cost)
    if chosen is None:
        return Phase(phase.name, tuple(u for u in phase.units if u != "vae"), phase.working)
    return Phase(phase.name, phase.units, phase.working + (cost(chosen) if cost else 0))


def request_phases(config, work, dtype, lm: str | None = None, lm_dtype=None, lm_device=None) -> list[Phase]:
    """The phases of one request (see the module docstring), their working memory from ``estimates``: the DiT's
    geometry ``config`` in ``dtype``; ``lm``: the LM size ("0.6B", "1.7B", "4B", or its geometry) when the LM plans
    the song (in ``lm_dtype``, on ``lm_device``: see ``estimates.lm_working``)."""
    from .estimates import condition_working, dit_working, lm_working

    phases = []
    if lm is not None:
        phases.append(Phase("lm", ("lm",), lm_working(lm, lm_dtype or dtype, work, device=lm_device)))
    if work.source_seconds > 0:
        phases.append(Phase("encode", ("vae", "model"), 0))
    condition = ("text_encoder", "vae", "model") if work.reference else ("text_encoder", "model")
    phases.append(Phase("condition", condition, condition_working(config, dtype, work)))
    phases.append(Phase("sample", ("model",), dit_working(config, dtype, work)))
    phases.append(Phase("render", ("vae",), 0))
    return phases


def plan_request(budget: int, config, work, dtype, vae_dtype=None, fp8: bool = False, lm: str | None = None,
                 lm_dtype=None, sizes: dict[str, UnitSize] | None = None, resident_layers: dict | None = None,
                 tile_limit: int | None = None) -> MemoryPlan:
    """The plan for one request: the unit sizes of ``config`` (built on the meta device, or the loaded modules'
    ``sizes``), the request's phases and the VAE's tile costs."""
    from .estimates import dit_size, lm_size, text_encoder_size, vae_decode_working, vae_encode_working, vae_size

    vae_dtype = vae_dtype or dtype
    if sizes is None:
        sizes = {"text_encoder": text_encoder_size(dtype), "model": dit_size(config, dtype, fp8),
                 "vae": vae_size(vae_dtype)}
        if lm is not None:
            sizes["lm"] = lm_size(lm, lm_dtype or dtype)
    return plan_memory(budget, sizes, request_phases(config, work, dtype, lm, lm_dtype),
                       vae_decode_cost=lambda tile: vae_decode_working(vae_dtype, tile, work),
                       vae_encode_cost=lambda seconds: vae_encode_working(vae_dtype, seconds),
                       resident_layers=resident_layers, tile_limit=tile_limit)
