"""ComfyUI registration (V3 API): the extension listing the pack's nodes."""
from comfy_api.latest import ComfyExtension, io

from .acestep_nodes import NODES
from .lm_nodes import LM_NODES
from .lora_node import LoraLoader
from .timestamps_node import LyricTimestamps


class AceStepExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*NODES, LoraLoader, *LM_NODES, LyricTimestamps]


async def comfy_entrypoint() -> AceStepExtension:
    return AceStepExtension()
