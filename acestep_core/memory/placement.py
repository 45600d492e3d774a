"""Where the pipeline's units are for each phase: the ``Placement`` a host hands to ``AceStepPipeline``.

The pipeline names the units a phase needs ("lm", "text_encoder", "vae", "model") and leaves where they go to its
placement. Two kinds exist (a host may write its own against the protocol):
  - ``LeaveLoaded`` (the default): every unit stays where it was loaded; the VAE sizes its tiles by the device's
    own free memory;
  - ``memory.manager.MemoryManager``: plans each request for a VRAM budget and places the units phase by phase
    (layer streaming, the VAE tile), built for a checkpoint by ``memory.manager.memory_manager``; the command line
    (on CUDA or with memory flags) and the ComfyUI nodes (with ``ManagedModules`` as its host) hand in one.
"""
from __future__ import annotations

from typing import Protocol

from .estimates import Workload


class Placement(Protocol):
    """What the pipeline asks of where its units live."""

    def prepare_request(self, req, variant: str, lm_codes: int | None = None) -> object:
        """Get ready for a checked request on a model variant. ``lm_codes``: the LM plans it first, writing that many
        codes per song (0: metas only; ``planning.lm_codes``); None: no LM phase."""

    def prepare(self, work: Workload, tile_limit: int | None = None, lm: bool | None = None) -> object:
        """Get ready for ``work`` (e.g. an LM text run: ``Workload(seconds=0, lm_codes=…)``, ``lm=True``)."""

    def use(self, parts: tuple[str, ...]) -> None:
        """Put these units on the compute device for the next phase."""

    def free_memory(self) -> int | None:
        """Bytes free for the VAE's working memory now; None = the device's own free memory."""

    def report(self) -> str:
        """One line on where the weights were for the last request ("" = nothing to tell)."""


class LeaveLoaded:
    """The default placement: every unit stays where it was loaded."""

    def prepare_request(self, req, variant: str, lm_codes: int | None = None) -> None:
        return None

    def prepare(self, work: Workload, tile_limit: int | None = None, lm: bool | None = None) -> None:
        return None

    def use(self, parts: tuple[str, ...]) -> None:
        return None

    def free_memory(self) -> int | None:
        return None

    def report(self) -> str:
        return ""
