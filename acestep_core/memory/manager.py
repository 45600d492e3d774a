"""A loaded checkpoint placed on the compute device phase by phase, following a ``MemoryPlan``.

A ``MemoryManager`` is a pipeline's ``placement`` (``memory.placement.Placement``), built for a checkpoint (and its
LM) by :func:`memory_manager` and handed to ``AceStepPipeline``. ``prepare_request(request)`` plans the request for
the budget (sets up layer streaming when the plan needs it); ``use(parts)`` puts those units on the device through
a host. The plain-PyTorch host (``TorchHost``) moves modules itself and, when the units take turns, moves the
others back to the CPU; ComfyUI's host (``nodes/comfy_adapter.py``) hands each unit to ComfyUI's model manager as
its own ``ModelPatcher`` with the unit's working memory as ``memory_required``, so ComfyUI evicts what it must.

A unit's *resident view* is what goes on the device: the unit itself, or for a streamed stack a module tree with
the same parameter names that leaves the streamed layers out (they stay in pinned CPU memory).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from ..constants import STREAM_SLOTS, VRAM_BUDGET_MAX_GB
from .estimates import GIB, UnitSize, Workload, stack_size, stored_bytes
from .fp8 import check_weight_dtype, weight_format
from .planner import MemoryPlan, UNIT_LABELS, plan_memory, request_phases
from .streaming import StreamedLayers, stream_layers, unstream_layers

# Where each streamable unit keeps its layers (the first path that exists): the DiT's decoder layers; the LM's
# layers (the pack's QwenLM, or transformers' Qwen3ForCausalLM layout).
STREAMABLE = {"model": ("decoder.layers",), "lm": ("layers", "model.layers")}


@dataclass(frozen=True)
class MemorySettings:
    """What the user chose: ``budget_gb`` (None = the free memory of the device), ``resident_layers`` of the DiT
    (None = as many as the budget allows; the rest stream), ``weight_dtype`` (how the DiT was loaded: see
    ``memory.fp8``), ``stream`` (False: never stream, every unit is placed whole)."""

    budget_gb: float | None = None
    resident_layers: int | None = None
    weight_dtype: str = "default"
    stream: bool = True

    def __post_init__(self):
        from ..errors import InputError

        budget = self.budget_gb
        if budget is not None and not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                                       and 0 < budget <= VRAM_BUDGET_MAX_GB):  # NaN and inf fail here too
            raise InputError("vram_budget", budget, f"a number of GB above 0, at most {VRAM_BUDGET_MAX_GB:g} (or auto)")
        if self.resident_layers is not None and (not isinstance(self.resident_layers, int) or self.resident_layers < 0):
            raise InputError("resident_layers", self.resident_layers, "0 or more layers (or auto)")
        check_weight_dtype(self.weight_dtype)

    @property
    def manual(self) -> bool:
        return self.budget_gb is not None or self.resident_layers is not None


class Host(Protocol):
    """Where units are placed: ``budget`` = bytes this process may use on the device for the units, ``free`` = bytes
    it can allocate right now, ``load`` = make sure ``loads`` (name, resident view) are on the device with
    ``working`` bytes to spare (``exclusive``: the plan takes turns, other units may go)."""

    def budget(self, device: torch.device) -> int: ...

    def free(self, device: torch.device) -> int: ...

    def load(self, device: torch.device, loads: list[tuple[str, nn.Module]], working: int, exclusive: bool,
             views: dict[str, nn.Module]) -> None: ...


class _View(nn.Module):
    """A stand-in for a module whose subtree holds streamed layers: the same parameters (shared) and buffers under
    the same names, children as views or the modules themselves. Moving it moves the real parameters; moved
    buffers are written back to the module they belong to."""

    def __init__(self, source: nn.Module):
        super().__init__()
        object.__setattr__(self, "_source", source)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, buffer in self._buffers.items():
            self._source._buffers[name] = buffer
        return self


def resident_view(module: nn.Module, leave_out: set[int]) -> nn.Module | None:
    """``module`` without the submodules whose ``id`` is in ``leave_out`` (None when ``module`` itself is left out)."""
    if id(module) in leave_out:
        return None
    if not any(id(m) in leave_out for m in module.modules()):
        return module
    view = _View(module)
    for name, p in module.named_parameters(recurse=False):
        view.register_parameter(name, p)
    for name, b in module.named_buffers(recurse=False):
        view.register_buffer(name, b)
    for name, child in module.named_children():
        sub = resident_view(child, leave_out)
        if sub is not None:
            view.add_module(name, sub)
    return view


class TorchHost:
    """Places units with ``module.to(device)``; the budget is what this process can allocate on the device."""

    def budget(self, device: torch.device) -> int:
        if device.type != "cuda":
            return 1 << 62  # no VRAM limit: everything stays where it is loaded
        free, total = torch.cuda.mem_get_info(device)
        available = free + torch.cuda.memory_reserved(device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
        return int(min(available, fraction * total))

    def free(self, device: torch.device) -> int:
        from .vae_tiles import device_free_memory

        return device_free_memory(device)

    def load(self, device, loads, working, exclusive, views) -> None:
        names = {name for name, _ in loads}
        if exclusive:
            for name, view in views.items():
                if name not in names:
                    view.to("cpu")
        for _, view in loads:
            view.to(device)


class MemoryManager:
    """See the module docstring. ``units``: name → module ("text_encoder", "model", "vae", optionally "lm")."""

    def __init__(self, units: dict[str, nn.Module], device: torch.device | str, config, dtype: torch.dtype,
                 settings: MemorySettings | None = None, host: Host | None = None, vae_dtype: torch.dtype | None = None,
                 lm_size: str | dict | None = None, slots: int = STREAM_SLOTS):
        self.units = dict(units)
        self.device = torch.device(device)
        self.config, self.dtype, self.vae_dtype = config, dtype, vae_dtype or dtype
        self.settings = settings or MemorySettings()
        self.host = host or TorchHost()
        self.lm_size = lm_size if lm_size is not None or "lm" not in units else lm_geometry(units["lm"])
        self.slots = slots
        self.plan: MemoryPlan | None = None
        self.views: dict[str, nn.Module] = dict(self.units)
        self._working: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------ sizes

    def sizes(self) -> dict[str, UnitSize]:
        """Each unit's weights as loaded (fp8 layers counted as stored)."""
        out = {}
        for name, module in self.units.items():
            layers = self._stack(name) if self.settings.stream else None
            out[name] = stack_size(name, module, layers, stored_bytes)
        return out

    def _stack(self, unit: str) -> nn.ModuleList | None:
        found = self._stack_owner(unit)
        return None if found is None else getattr(*found)

    def _stack_owner(self, unit: str) -> tuple[nn.Module, str] | None:
        """(the module holding the unit's layer list, its attribute name), or None for a unit placed whole."""
        for path in STREAMABLE.get(unit, ()) if unit in self.units else ():
            parent, _, attribute = path.rpartition(".")
            try:
                owner = self.units[unit].get_submodule(parent)
            except AttributeError:
                continue
            if isinstance(getattr(owner, attribute, None), nn.ModuleList):
                return owner, attribute
        return None

    def budget(self) -> int:
        available = self.host.budget(self.device)
        if self.settings.budget_gb is not None:
            return min(available, int(self.settings.budget_gb * GIB)) if self.device.type == "cuda" else int(
                self.settings.budget_gb * GIB)
        return available

    # ------------------------------------------------------------------------------------------------ planning

    def prepare_request(self, req, variant: str, lm_codes: int | None = None) -> MemoryPlan:
        """``prepare`` for a checked request (``acestep_core.request.Request``) on a model variant. ``lm_codes``:
        the LM plans the request first, writing that many codes per song (0: metas only; ``planning.lm_codes``);
        None: no LM phase."""
        tile = req.render.tile_frames if req.render is not None else None
        work = Workload.of(req, variant)
        if lm_codes is not None:
            work = replace(work, lm_codes=lm_codes)
        return self.prepare(work, tile, lm=lm_codes is not None)

    def prepare(self, work: Workload, tile_limit: int | None = None, lm: bool | None = None) -> MemoryPlan:
        """Plan ``work`` for the current budget and set the units up for it (streamed stacks, resident views).
        ``lm``: whether the LM phase runs (None: whenever there is an LM unit). Resets CUDA's peak-memory counter,
        so ``report()`` tells this request's peak."""
        plan = self.plan_for(work, tile_limit, lm)
        self._apply(plan)
        self.plan = plan
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return plan

    def plan_for(self, work: Workload, tile_limit: int | None = None, lm: bool | None = None) -> MemoryPlan:
        """The plan for ``work`` at the current budget, without changing anything (``lm``: as ``prepare``)."""
        from .estimates import vae_decode_working, vae_encode_working

        sizes = self.sizes()
        fixed = {}
        if self.settings.resident_layers is not None:
            fixed["model"] = self.settings.resident_layers
        if not self.settings.stream:
            fixed = {u: s.layers for u, s in sizes.items() if s.layers}
        with_lm = "lm" in self.units and (lm is None or lm)
        lm_dtype = _dtype_of(self.units["lm"]) if with_lm else None
        phases = [p for p in request_phases(self.config, work, self.dtype, self.lm_size if with_lm else None,
                                            lm_dtype, self.device) if all(u in sizes for u in p.units)]
        plan = plan_memory(self.budget(), sizes, phases,
                           vae_decode_cost=lambda tile: vae_decode_working(self.vae_dtype, tile, work),
                           vae_encode_cost=lambda seconds: vae_encode_working(self.vae_dtype, seconds),
                           resident_layers=fixed, slots=self.slots, tile_limit=tile_limit)
        self._working = {p.name: p.working for p in phases}
        return plan

    def _apply(self, plan: MemoryPlan) -> None:
        for unit in STREAMABLE:
            found = self._stack_owner(unit)
            if found is None or unit not in plan.residency:
                continue
            owner, attribute = found
            stack = getattr(owner, attribute)
            residency = plan.residency[unit]
            if residency.streamed:
                if not (isinstance(stack, StreamedLayers) and stack.resident == residency.resident):
                    module = self.units[unit]
                    stack = stream_layers(owner, attribute, residency.resident, lambda m=module: _device_of(m),
                                          self.slots, pin=self.device.type == "cuda")
                stack.streamer.invalidate()
                streamed = {id(layer) for layer in list(stack._modules.values())[stack.resident:]}
                self.views[unit] = resident_view(self.units[unit], streamed)
            else:
                unstream_layers(owner, attribute)
                self.views[unit] = self.units[unit]

    # ------------------------------------------------------------------------------------------------ placing

    def use(self, parts) -> None:
        """Put these units (their resident views) on the device for the pipeline's next phase
        (when the units take turns, the others go back to the CPU). The VAE goes too (0.3 GB): when no tile fits
        next to it, ``vae_tiles`` decodes with a CPU copy."""
        if self.plan is None:  # e.g. a decode before any generation: plan a default song
            self.prepare(Workload())
        loads = [(p, self.views[p]) for p in parts if p in self.units]
        working = max((w for name, w in self._working.items() if name in _phases_of(parts)), default=0)
        self.host.load(self.device, loads, working, not self.plan.together, self.views)

    def free_memory(self) -> int:
        """Bytes free for working memory now: the host's answer, within the budget when one was set."""
        free = self.host.free(self.device)
        if self.settings.budget_gb is not None:
            used = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else sum(
                stored_bytes(v) for v in self.views.values() if _on(v, self.device))
            free = min(free, int(self.settings.budget_gb * GIB) - used)
        return free

    # ------------------------------------------------------------------------------------------------ report

    def report(self) -> str:
        """Where the weights were: resident / streamed / fp8, the plan's estimate and, on CUDA, the measured peak."""
        if self.plan is None:
            return ""
        plan = self.plan
        parts = []
        for unit in self.units:
            label = UNIT_LABELS.get(unit, unit)
            r = plan.residency.get(unit)
            if r is not None and r.streamed:
                label += f" {r.resident}/{r.layers} layers resident, {r.streamed} streamed"
            if unit == "model" and weight_format(self.units[unit]):
                label += f" ({weight_format(self.units[unit])})"
            if unit == "vae" and plan.vae_tile is None:
                label += " on the CPU"
            parts.append(label)
        where = ("resident: " if plan.together else "one at a time: ") + ", ".join(parts)
        line = f"weights {where} · budget {plan.budget / GIB:.1f} GB" if plan.budget < 1 << 61 else f"weights {where}"
        if self.device.type == "cuda":
            line += f" · peak {torch.cuda.max_memory_allocated(self.device) / GIB:.2f} GB (CUDA)"
        return line


def _phases_of(parts) -> set[str]:
    """The plan phases a ``use(parts)`` call belongs to (for their working memory)."""
    parts = set(parts)
    if parts == {"vae"}:
        return {"render"}
    if parts == {"model"}:
        return {"sample"}
    if parts == {"lm"}:
        return {"lm"}
    names = set()
    if "text_encoder" in parts:
        names.add("condition")
    if "vae" in parts and "model" in parts:
        names.add("encode")
    return names


def _device_of(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(module.parameters()).device


def _dtype_of(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _on(module: nn.Module, device: torch.device) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.device.type == device.type


def memory_manager(ckpt, settings: MemorySettings, device, host: Host | None = None, planner=None) -> MemoryManager:
    """A MemoryManager over the loaded units of ``ckpt`` (a ``loading.checkpoint.AceStepCheckpoint``) and, when given,
    the 5 Hz LM of ``planner`` (an ``lm_planner.Planner``): hand it to the pipeline
    (``AceStepPipeline(ckpt, planner, placement=…)``), which then has every request planned and the units placed
    phase by phase on ``device``."""
    units = {"text_encoder": ckpt.text_encoder, "model": ckpt.model, "vae": ckpt.vae}
    if planner is not None:  # the 5 Hz LM: its own unit, placed for the plan phase only
        units["lm"] = planner.lm
    vae_dtype = next(ckpt.vae.parameters()).dtype
    return MemoryManager(units, device, ckpt.model.config, ckpt.model.dtype, settings, host, vae_dtype)


def load_device(info, dtype: torch.dtype, device, settings: MemorySettings, work: Workload) -> torch.device:
    """Where to load a checkpoint (``loading.checkpoint.inspect_checkpoint``'s info) before generating ``work`` on
    ``device``: the device itself when every unit fits there at once (nothing will move), else the CPU (the
    units then go to the device in turn)."""
    from .planner import plan_request

    device = torch.device(device)
    if device.type != "cuda":
        return device
    budget = TorchHost().budget(device)
    if settings.budget_gb is not None:
        budget = min(budget, int(settings.budget_gb * GIB))
    fixed = {"model": settings.resident_layers} if settings.resident_layers is not None else None
    plan = plan_request(budget, info.config, work, dtype, fp8=settings.weight_dtype != "default",
                        resident_layers=fixed)
    return device if plan.together else torch.device("cpu")


def lm_geometry(lm: nn.Module) -> dict:
    """The geometry ``estimates.lm_working`` takes, read from an LM's config: the pack's ``LMConfig`` (num_layers,
    num_heads, num_kv_heads) or a transformers Qwen3 config."""
    cfg = lm.config
    pick = lambda *names: next(getattr(cfg, n) for n in names if hasattr(cfg, n))  # noqa: E731
    return dict(vocab_size=pick("vocab_size"), hidden_size=pick("hidden_size"),
                intermediate_size=pick("intermediate_size"),
                num_hidden_layers=pick("num_hidden_layers", "num_layers"),
                num_attention_heads=pick("num_attention_heads", "num_heads"),
                num_key_value_heads=pick("num_key_value_heads", "num_kv_heads"), head_dim=pick("head_dim"))
