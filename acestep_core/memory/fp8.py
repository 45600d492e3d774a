"""8-bit weights: Linear weights stored as float8 with one float32 scale per output channel.

``weight ≈ q · scale[:, None]`` with ``scale = max|row| / FMAX`` (448 for e4m3fn, 57344 for e5m2), so every row
uses the whole fp8 range. A layer computes by dequantising its weight into the input's dtype (any device, the
CPU included), or with ``fast`` on a GPU that has it, by ``torch._scaled_mm``: the input is quantised per row to
e4m3fn too and the product accumulates in float32 (ComfyUI's ``fp8_e4m3fn_fast``; more error, twice the matmul
speed on Ada/Hopper).

Only the diffusion decoder's Linear layers take fp8, as upstream quantises (``estimates.decoder_fp8``); norms,
embeddings, the condition encoder, the FSQ tokenizer path and the VAE stay as loaded. Files: a checkpoint whose
decoder Linear weights are float8 is read as it is, with ``<linear>.weight_scale`` float32 [out] beside each
(``FP8_SCALE_SUFFIX``; a scalar scale, or none at all, as ComfyUI writes them, is taken too);
``quantized_state_dict`` writes such a file from a bf16/fp32 one.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import FP8_SCALE_SUFFIX, WEIGHT_DTYPES
from ..errors import InputError

FP8_FORMATS = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
               "fp8_e5m2": torch.float8_e5m2}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def check_weight_dtype(weight_dtype: str) -> str:
    if weight_dtype not in WEIGHT_DTYPES:
        raise InputError("weight_dtype", weight_dtype, f"one of {', '.join(WEIGHT_DTYPES)}")
    return weight_dtype


def quantize(weight: torch.Tensor, fmt: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] weight → (float8 weight, float32 scale [out]); computed in float32 on the weight's device. An
    all-zero row gets scale 1."""
    w = weight.float()
    fmax = torch.finfo(fmt).max
    scale = w.abs().amax(dim=1) / fmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (w / scale[:, None]).clamp_(-fmax, fmax).to(fmt)
    return q, scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float8 [out, in] and scale [out] (or a scalar) → the weight in ``dtype`` (the product taken in float32)."""
    scale = scale.float()
    return (weight.float() * (scale[:, None] if scale.dim() else scale)).to(dtype)


class Fp8Linear(nn.Linear):
    """A Linear whose weight is float8 with a per-output-channel ``weight_scale``. It is an ``nn.Linear`` (adapters
    find it by type; ``weight`` has the usual shape), computed as described in the module docstring."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: torch.dtype = torch.float8_e4m3fn,
                 fast: bool = False, device=None, bias_dtype: torch.dtype | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.fast = in_features, out_features, fast
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=fmt, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: torch.dtype, fast: bool = False) -> "Fp8Linear":
        """Quantise a loaded Linear (its weight read once, in float32, on its own device)."""
        q, scale = quantize(linear.weight.detach(), fmt)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.fast = linear.in_features, linear.out_features, fast
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer

    def reset_parameters(self) -> None:  # nn.Linear's initialiser does not apply to stored fp8 weights
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype not in FP8_DTYPES:  # never expected; kept so a plain weight still computes
            return F.linear(x, self.weight, self.bias)
        if self.fast and x.is_cuda and scaled_mm_supported(x.device) and self.weight.dtype == torch.float8_e4m3fn:
            out = _scaled_linear(x, self.weight, self.weight_scale, self.bias)
            if out is not None:
                return out
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)

    def patch_weight(self, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        """Apply ``change`` (dequantised weight → patched weight, e.g. a LoRA's W + ΔW) and requantise with fresh
        scales; returns the function that puts the stored weight and scales back exactly (``adapters.patched``)."""
        old_weight, old_scale = self.weight.data, self.weight_scale.data
        base = dequantize(old_weight, old_scale, torch.float32)
        self.weight.data, self.weight_scale.data = quantize(change(base), old_weight.dtype)

        def restore() -> None:  # where the layer is now (it may have moved between devices meanwhile)
            device = self.weight.device
            self.weight.data, self.weight_scale.data = old_weight.to(device), old_scale.to(device)

        return restore

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight={str(self.weight.dtype).replace('torch.', '')}, fast={self.fast}")


_SCALED_MM: dict[str, bool] = {}


def scaled_mm_supported(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` with row-wise scales runs here: CUDA compute capability 8.9 (Ada) or newer,
    and it did not fail before in this process."""
    key = str(device)
    if key not in _SCALED_MM:
        _SCALED_MM[key] = (device.type == "cuda" and hasattr(torch, "_scaled_mm")
                           and torch.cuda.get_device_capability(device) >= (8, 9))
    return _SCALED_MM[key]


def _scaled_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """x @ (weight·scale)ᵀ by the GPU's fp8 matmul: x quantised to e4m3fn with one scale per row, float32
    accumulation, the result in x's dtype (bf16 or fp16; float32 inputs take the dequantised path). Returns None
    (and stops trying on this device) when the kernel refuses the shapes or the build lacks it. Not run in CI."""
    if x.dtype not in (torch.bfloat16, torch.float16) or weight.shape[0] % 16 or weight.shape[1] % 16:
        return None
    rows = x.reshape(-1, x.shape[-1])
    fmax = torch.finfo(torch.float8_e4m3fn).max
    x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / fmax).clamp_(min=1e-12)
    xq = (rows.float() / x_scale).clamp_(-fmax, fmax).to(torch.float8_e4m3fn)
    try:
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=scale.float()[None, :], out_dtype=x.dtype)
    except (RuntimeError, TypeError, NotImplementedError) as e:
        _SCALED_MM[str(x.device)] = False
        warnings.warn(f"fp8 matmul (torch._scaled_mm) is not available here, dequantising instead: {e}", stacklevel=3)
        return None
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------------------------------------------- conversion


def quantize_linears(module: nn.Module, fmt: torch.dtype, fast: bool = False,
                     select: Callable[[str, nn.Module], bool] = lambda name, m: True) -> int:
    """Replace every ``nn.Linear`` of ``module`` that ``select(qualified name, linear)`` picks by an ``Fp8Linear``
    (one layer at a time: the peak is one layer's float32 copy). Layers that already are fp8 are re-set to ``fast``
    and converted to ``fmt`` when stored in the other format. Returns how many layers are fp8 now."""
    count = 0
    for name, linear in list(module.named_modules()):
        if not isinstance(linear, nn.Linear) or not select(name, linear):
            continue
        if isinstance(linear, Fp8Linear):
            linear.fast = fast
            if linear.weight.dtype != fmt:
                linear.weight.data, linear.weight_scale.data = quantize(
                    dequantize(linear.weight, linear.weight_scale, torch.float32), fmt)
        else:
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent), child, Fp8Linear.from_linear(linear, fmt, fast))
        count += 1
    return count


def is_fp8_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a checkpoint's tensors hold float8 weights (an fp8 file)."""
    return any(t.dtype in FP8_DTYPES for t in state.values())


def quantized_state_dict(state: Mapping[str, torch.Tensor], fmt: torch.dtype,
                         select: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """A checkpoint with the 2-D weights ``select(key)`` picks stored as float8 plus ``<linear>.weight_scale``
    (what an fp8 file holds; the other tensors as they are)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(".weight") and tensor.dim() == 2 and tensor.dtype not in FP8_DTYPES and select(key):
            q, scale = quantize(tensor, fmt)
            out[key], out[key[: -len(".weight")] + FP8_SCALE_SUFFIX] = q, scale
        else:
            out[key] = tensor
    return out


def fp8_layout(state: Mapping[str, torch.Tensor], dtype: torch.dtype, source: str) -> tuple[dict, dict]:
    """Split an fp8 file's tensors into (the state for the model, float8 weights by Linear name with their scales).

    Float8 weights go to the second dict as (weight, scale): the scale is ``<linear>.weight_scale`` (per channel or a
    scalar, ComfyUI's ``.scale_weight`` too), or 1 when the file has none. Every other tensor stays in the first,
    cast to ``dtype``."""
    from ..errors import CheckpointError

    rest, fp8 = {}, {}
    scales = {}
    for key, t in state.items():
        for suffix in (FP8_SCALE_SUFFIX, ".scale_weight"):
            if key.endswith(suffix):
                scales[key[: -len(suffix)]] = t
                break
    for key, t in state.items():
        if key.endswith((FP8_SCALE_SUFFIX, ".scale_weight", ".scale_input", ".input_scale", ".comfy_quant")) or \
                key == "scaled_fp8":
            continue
        if t.dtype in FP8_DTYPES:
            if not key.endswith(".weight") or t.dim() != 2:
                raise CheckpointError(f"{source}: {key} is {t.dtype} but only Linear weights can be float8")
            name = key[: -len(".weight")]
            scale = scales.get(name, torch.ones((), dtype=torch.float32)).float()
            if scale.numel() not in (1, t.shape[0]):
                raise CheckpointError(f"{source}: {name}{FP8_SCALE_SUFFIX} has {scale.numel()} values for a "
                                      f"{list(t.shape)} weight; expected 1 or {t.shape[0]}")
            fp8[name] = (t, scale.reshape(-1).expand(t.shape[0]).contiguous())
        else:
            rest[key] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
    return rest, fp8


def keeps_stored_dtype(key: str, tensor: torch.Tensor) -> bool:
    """Tensors an fp8 file keeps as stored when the rest is cast to the model dtype: the float8 weights and their
    float32 scales (``read_safetensors(keep=...)``)."""
    return tensor.dtype in FP8_DTYPES or key.endswith((FP8_SCALE_SUFFIX, ".scale_weight"))


def is_decoder_linear_weight(key: str) -> bool:
    """The DiT checkpoint keys of the decoder's Linear weights (its only 2-D ``.weight`` tensors; the patch
    convolutions are 3-D, norms 1-D), by name: ``decoder.…weight`` (prefix already removed)."""
    return key.startswith("decoder.") and key.endswith(".weight")


def keeps_for_quantising(key: str, tensor: torch.Tensor) -> bool:
    """``keeps_stored_dtype`` plus the decoder's Linear weights, read as stored so that quantising at load gives
    what an fp8 file written from the same checkpoint holds."""
    in_decoder = key.startswith("decoder.") or ".decoder." in key  # also under an all-in-one file's prefix
    return keeps_stored_dtype(key, tensor) or (in_decoder and key.endswith(".weight") and tensor.dim() == 2)


def dit_from_state_dict(state: Mapping[str, torch.Tensor], config, dtype: torch.dtype, weight_dtype: str = "default",
                        source: str = "checkpoint"):
    """The DiT checkpoint (``AceStepModel``) from its tensors (keys as in the file) in the weight format asked for.

    ``weight_dtype`` "default": as the file stores them (an fp8 file's decoder Linears stay fp8, everything else in
    ``dtype``); "fp8_e4m3fn" / "fp8_e4m3fn_fast" / "fp8_e5m2": the decoder's Linear weights in that format,
    quantised here from a bf16/fp32 file (or converted from the other fp8 format). Float8 weights outside the
    decoder (not expected) are dequantised into ``dtype``."""
    from ..models.model import AceStepModel, from_checkpoint_keys
    from ..loading.weights import assign_state_dict
    from .estimates import decoder_fp8

    check_weight_dtype(weight_dtype)
    fmt, fast = FP8_FORMATS.get(weight_dtype), weight_dtype.endswith("_fast")
    if fmt is not None and not is_fp8_state(state):  # quantise from the weights as the file stores them
        state = quantized_state_dict(state, fmt, is_decoder_linear_weight)
    if not is_fp8_state(state):
        state = {k: (v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v) for k, v in state.items()}
        model = AceStepModel.from_state_dict(state, config, source=source)
    else:
        rest, fp8 = fp8_layout(state, dtype, source)
        with torch.device("meta"):
            model = AceStepModel(config)
        for name, (weight, scale) in fp8.items():
            if not name.startswith("decoder."):
                rest[name + ".weight"] = dequantize(weight, scale, dtype)
                continue
            linear = model.get_submodule(name) if _has_module(model, name) else None
            if not isinstance(linear, nn.Linear):
                from ..errors import CheckpointError
                raise CheckpointError(f"{source}: {name}.weight is float8 but {name} is not a Linear layer of the DiT")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Fp8Linear(
                linear.in_features, linear.out_features, linear.bias is not None, weight.dtype, fast, device="meta"))
            rest[name + ".weight"], rest[name + FP8_SCALE_SUFFIX] = weight, scale
        assign_state_dict(model, from_checkpoint_keys(rest), source)
        model.match_rope_rounding(model.dtype)
        model = model.eval().requires_grad_(False)
    if fmt is not None:
        quantize_linears(model, fmt, fast, select=decoder_fp8)
    return model


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def weight_format(model: nn.Module) -> str:
    """"fp8_e4m3fn" (with " fast" when the scaled matmul is on) / "fp8_e5m2" for a model with fp8 Linears, else
    "" (for the summary line)."""
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    if not layers:
        return ""
    name = str(layers[0].weight.dtype).replace("torch.float8_", "fp8_")
    return name + (" fast" if layers[0].fast else "")
