"""The ACE-Step 1.5 LoRA node: model + an adapter from the loras folders + strength → model. Chainable; the value
it returns is the loader's cached model plus the stacked (adapter, strength) pairs, never a changed copy of the
weights (``models.LoadedModel.with_adapter``)."""
from __future__ import annotations

from comfy_api.latest import io

from . import models
from .acestep_nodes import CATEGORY, PREFIX, AceStepModel

STRENGTH_LIMIT = 100.0  # as ComfyUI's own LoRA loaders


class LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "LoraLoader",
            display_name="ACE-Step 1.5 LoRA",
            category=CATEGORY,
            description="Applies a LoRA or LoKr to the ACE-Step 1.5 model: a .safetensors file (ComfyUI, "
                        "LyCORIS, kohya or diffusers naming) or the official trainer's PEFT / LoKr folder, "
                        "from models/loras. Chain several to stack them. The loaded model is not changed: the "
                        "weights are patched only while the sampler runs.",
            inputs=[
                AceStepModel.Input("model", tooltip="The ACE-Step 1.5 model from the Model Loader, or from another "
                                                    "LoRA node (chain them to stack LoRAs)."),
                io.Combo.Input("lora_name", options=models.lora_choices(),
                               tooltip="A .safetensors file or a LoRA folder (adapter_config.json + "
                                       "adapter_model.safetensors, or lokr_weights.safetensors) under "
                                       "models/loras. It must be made for this model's size (2B or XL)."),
                io.Float.Input("strength", default=1.0, min=-STRENGTH_LIMIT, max=STRENGTH_LIMIT, step=0.01,
                               tooltip="How much of the LoRA to apply: 1 = as trained, 0 = off, above 1 = "
                                       "stronger, negative = the opposite direction."),
            ],
            outputs=[AceStepModel.Output(display_name="model",
                                         tooltip="The model with this LoRA on top, for the Sampler or another "
                                                 "LoRA node.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength=1.0) -> io.NodeOutput:
        from ..acestep_core.adapters import load_adapter

        adapter = load_adapter(models.resolve_lora(lora_name))
        out = model.with_adapter(adapter, strength)
        notes = [f"note: {n}" for n in adapter.notes]
        return io.NodeOutput(out, ui={"text": ["\n".join([out.describe_adapters(), *notes])]})
