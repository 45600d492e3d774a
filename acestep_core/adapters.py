"""LoRA, LoKr and DoRA adapters for ACE-Step 1.5: read every published file format, bind it to a model, and
patch the model's weights for the length of a run, putting the original tensors back afterwards.

    adapter = load_adapter(path)                                     # parsed and checked on its own, on CPU
    deltas = weight_deltas(model, [(adapter, 1.0), (other, -0.5)])   # names and shapes checked on the model
    with patched(model, deltas):                                     # weights patched in their own dtype
        ...                                                          # everything that runs the model
    # every patched parameter holds its original tensor again (bit-identical: the same tensor)

Formats, told apart by the files and their keys:
  * PEFT folder (the official trainer's LoRA): adapter_config.json + adapter_model.safetensors, keys
    ``base_model.model.<DiT module>.lora_A/lora_B.weight`` (+ ``lora_magnitude_vector`` with use_dora);
    scale lora_alpha / r, per module through alpha_pattern / rank_pattern, lora_alpha / sqrt(r) with use_rslora.
  * LyCORIS (the official trainer's LoKr): lokr_weights.safetensors, keys ``lycoris_<DiT module with _>.
    lokr_w1[_a,_b] / lokr_w2[_a,_b] / lokr_t2 / alpha / dora_scale`` (the trainer's ``lokr_config`` metadata is
    not needed: the shapes and alpha say it all); LyCORIS LoRA (LoCon) keys ``lora_up / lora_down / alpha``.
  * single files as ComfyUI, kohya-style tools and diffusers write them: ``diffusion_model.<model name>``,
    ``base_model.model.<DiT name>``, ``lycoris_`` / ``lora_unet_`` names with "_" for ".", ``transformer.<diffusers
    name>``; ``lora_up / lora_down / alpha`` or ``lora_A / lora_B``; DoRA ``dora_scale``.
Every key of a file must be understood and must name a Linear or Conv1d weight of the model, else a
CheckpointError names the file and the first offending key.

The change of one weight W (shape [out, in] or [out, in, k]), computed in float32:
  LoRA  ΔW = scale · up @ down               scale = alpha / rank (PEFT: from its config; no alpha in a file: 1)
  LoKr  ΔW = scale · w1 ⊗ w2                 w1 = w1_a @ w1_b, w2 = w2_a @ w2_b or Tucker(t2, w2_a, w2_b);
                                             scale = alpha / rank, 1 when both factors are stored whole
  DoRA  ΔW = m · (W + ΔW) / ‖W + ΔW‖ − W     norm per output channel (PEFT; LyCORIS [out, 1]) or per input
                                             channel (LyCORIS [1, in])
A stack of (adapter, strength) changes W by Σ strength · ΔW, each ΔW taken against the unpatched W. The
strength multiplies the whole change, for DoRA too, as ComfyUI applies it (PEFT would put its scale inside
the DoRA norm instead; the two agree at strength 1).
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .constants import (
    ADAPTER_KEY_PREFIXES,
    ADAPTER_KEY_SUFFIXES,
    ADAPTER_SCALE_MAX,
    LOKR_WEIGHTS_FILE,
    PEFT_ADAPTER_SUBFOLDER,
    PEFT_CONFIG_FILE,
    PEFT_DEFAULT_ALPHA,
    PEFT_DEFAULT_R,
    PEFT_UNSUPPORTED_OPTIONS,
    PEFT_WEIGHTS_FILE,
    PICKLE_EXTENSIONS,
    UNSUPPORTED_ADAPTER_KEYS,
)
from .errors import CheckpointError, InputError
from .loading.weights import read_json, read_safetensors

if TYPE_CHECKING:
    from .models.config import AceStepConfig
# The model code (models.model) is imported where it is used, so that listing and reading adapter files (the
# ComfyUI node list, the CLI's argument checks) does not import the networks.

LOKR_ROLES = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")


# --------------------------------------------------------------------------- the change of one weight


@dataclass(frozen=True, repr=False, eq=False)
class LowRank:
    """ΔW = scale · up @ down, with up [out, r, 1…] and down [r, in, k…] (Linear or Conv1d)."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in·k) of the weight it changes."""
        return self.up.shape[0], math.prod(self.down.shape[1:])

    def matrix(self, device, factor: float = 1.0) -> torch.Tensor:
        """factor · ΔW as an [out, in·k] float32 matrix (the factor goes into the small ``up``)."""
        up = self.up.to(device, torch.float32).flatten(1) * (self.scale * factor)
        return up @ self.down.to(device, torch.float32).flatten(1)


@dataclass(frozen=True, repr=False, eq=False)
class Kronecker:
    """ΔW = scale · w1 ⊗ w2 (LoKr). Each factor is stored whole or as a low-rank pair; w2 of a convolution
    may also be a Tucker core t2 [r, r, k…] with w2_a [r, out₂] and w2_b [r, in₂]."""

    w1: torch.Tensor | None
    w1_a: torch.Tensor | None
    w1_b: torch.Tensor | None
    w2: torch.Tensor | None
    w2_a: torch.Tensor | None
    w2_b: torch.Tensor | None
    t2: torch.Tensor | None
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        out1, in1 = self.w1.shape if self.w1 is not None else (self.w1_a.shape[0], self.w1_b.shape[1])
        if self.w2 is not None:
            out2, in2 = self.w2.shape[0], math.prod(self.w2.shape[1:])
        elif self.t2 is not None:
            out2, in2 = self.w2_a.shape[1], self.w2_b.shape[1] * math.prod(self.t2.shape[2:])
        else:
            out2, in2 = self.w2_a.shape[0], math.prod(self.w2_b.shape[1:])
        return out1 * out2, in1 * in2

    def matrix(self, device, factor: float = 1.0) -> torch.Tensor:
        """factor · ΔW as an [out, in·k] float32 matrix (the factor goes into ``w1``, the small half)."""
        def f32(t):
            return t.to(device, torch.float32)

        w1 = f32(self.w1) if self.w1 is not None else f32(self.w1_a) @ f32(self.w1_b)
        if self.w2 is not None:
            w2 = f32(self.w2).flatten(1)
        elif self.t2 is not None:  # Tucker: w2[p, q, k…] = Σ t2[i, j, k…] · w2_a[i, p] · w2_b[j, q]
            w2 = torch.einsum("ij...,ip,jq->pq...", f32(self.t2), f32(self.w2_a), f32(self.w2_b)).flatten(1)
        else:
            w2 = f32(self.w2_a) @ f32(self.w2_b).flatten(1)
        # kron of [a, c] and [b, d·k] is [a·b, c·d·k], which is the weight [a·b, c·d, k] flattened.
        return torch.kron(w1 * (self.scale * factor), w2)


@dataclass(frozen=True, repr=False, eq=False)
class Target:
    """One weight an adapter changes: its module name as the file writes it, the update, and an optional
    DoRA magnitude (one value per output channel, or per input channel when ``per_output`` is False)."""

    key: str
    update: LowRank | Kronecker
    magnitude: torch.Tensor | None = None
    per_output: bool = True

    def delta(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """strength · ΔW for the unpatched ``weight``: a new float32 tensor, shaped and placed like it."""
        if self.magnitude is None:
            return self.update.matrix(weight.device, strength).reshape(weight.shape)
        merged = self.update.matrix(weight.device).reshape(weight.shape).add_(weight)  # W + ΔW, float32
        dims = tuple(range(1, weight.dim())) if self.per_output else (0, *range(2, weight.dim()))
        norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
        magnitude = self.magnitude.to(weight.device, torch.float32).reshape(norm.shape)
        change = merged.mul_(magnitude / norm).sub_(weight)
        return change if strength == 1.0 else change.mul_(strength)


@dataclass(frozen=True, repr=False, eq=False)
class Adapter:
    """A parsed adapter file, independent of any model (CPU tensors as stored)."""

    path: str  # what was asked for: a file or a folder
    source: str  # the weights file read
    kind: str  # "PEFT LoRA", "LyCORIS LoKr", "LoRA", … (+ " + DoRA")
    targets: tuple[Target, ...]
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        base = os.path.basename(os.path.normpath(self.path))
        return base[: -len(".safetensors")] if base.endswith(".safetensors") else base

    def __repr__(self) -> str:
        return f"Adapter({self.name!r}: {self.kind}, {len(self.targets)} weights)"


# --------------------------------------------------------------------------- reading files


def load_adapter(path: str) -> Adapter:
    """Read an adapter from a file or folder (format detected); raises CheckpointError naming what is wrong.

    Folders: PEFT (adapter_config.json + adapter_model.safetensors, also one level down in ``adapter/`` as
    the official trainer saves it), LoKr (lokr_weights.safetensors), or a folder holding one .safetensors.
    """
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such LoRA file or folder")
    if os.path.isdir(path):
        return _load_folder(path)
    folder = os.path.dirname(path)
    if os.path.basename(path) == PEFT_WEIGHTS_FILE and os.path.isfile(os.path.join(folder, PEFT_CONFIG_FILE)):
        return _load_peft(folder, given=path)
    return _load_file(path, given=path)


def _load_folder(folder: str) -> Adapter:
    for candidate in (folder, os.path.join(folder, PEFT_ADAPTER_SUBFOLDER)):
        if os.path.isfile(os.path.join(candidate, PEFT_CONFIG_FILE)):
            return _load_peft(candidate, given=folder)
    if os.path.isfile(os.path.join(folder, LOKR_WEIGHTS_FILE)):
        return _load_file(os.path.join(folder, LOKR_WEIGHTS_FILE), given=folder)
    files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if len(files) == 1:
        return _load_file(os.path.join(folder, files[0]), given=folder)
    found = f"; it holds {len(files)} .safetensors files, name one of them" if files else ""
    raise CheckpointError(
        f"{folder}: not a LoRA folder: expected {PEFT_CONFIG_FILE} + {PEFT_WEIGHTS_FILE} (PEFT, the official "
        f"trainer's LoRA), {LOKR_WEIGHTS_FILE} (LyCORIS LoKr) or a single .safetensors file{found}")


def _refuse_pickle(path: str):
    if path.lower().endswith(PICKLE_EXTENSIONS):
        raise CheckpointError(f"{path}: a pickle file; the pack reads adapters only as .safetensors (pickles can "
                              "run code when loaded). Convert it to .safetensors first")


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    _refuse_pickle(path)
    tensors = read_safetensors(path)
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors, so no adapter")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {t.dtype}; adapter tensors are floating point")
        # One reduction pass: a NaN or an infinity anywhere makes the sum non-finite; only then are they counted.
        bad = 0 if math.isfinite(float(t.sum(dtype=torch.float32))) else t.numel() - int(torch.isfinite(t).sum())
        if bad:
            first = t.flatten()[~torch.isfinite(t.flatten())][0].item()
            raise CheckpointError(f"{path}: tensor {key!r} holds {bad} non-finite value(s) of {t.numel()} (first: "
                                  f"{first}); adapter tensors must be finite numbers (the file is damaged, or its "
                                  "training diverged)")
    return tensors


def _checked_scale(scale: float, alpha: float, rank: float, what: str, source: str) -> float:
    """``scale`` (alpha / rank) if it is finite and at most ADAPTER_SCALE_MAX in size; else an error naming
    ``what`` (the alpha's key or config entry)."""
    if not math.isfinite(scale) or abs(scale) > ADAPTER_SCALE_MAX:
        raise CheckpointError(f"{source}: {what} = {alpha:g} makes the scale alpha / rank = {alpha:g} / {rank:g} = "
                              f"{scale:g}; allowed: a scale of at most {ADAPTER_SCALE_MAX:g} in size (trained "
                              "adapters use about 0.01 to 16)")
    return scale


def _split_key(key: str, source: str) -> tuple[str, str]:
    """'<module><suffix>' → (module, role); a key of no known adapter part is an error naming it."""
    for suffix in sorted(ADAPTER_KEY_SUFFIXES, key=len, reverse=True):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], ADAPTER_KEY_SUFFIXES[suffix]
    for marker, family in UNSUPPORTED_ADAPTER_KEYS.items():
        if marker in key:
            raise CheckpointError(f"{source}: key {key!r} belongs to a {family} adapter, which the pack does not "
                                  "apply (it applies LoRA, LoKr and DoRA)")
    raise CheckpointError(f"{source}: key {key!r} is not part of a LoRA, LoKr or DoRA adapter (their keys end in "
                          f"{', '.join(sorted(set(ADAPTER_KEY_SUFFIXES)))})")


def _group(tensors: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Module name → {role: tensor}, in file order."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, role = _split_key(key, source)
        parts = groups.setdefault(module, {})
        if role in parts:
            raise CheckpointError(f"{source}: {module!r} has two {role} tensors (key {key!r})")
        parts[role] = tensor
    return groups


def _alpha(module: str, parts: dict, source: str) -> float | None:
    alpha = parts.get("alpha")
    if alpha is None:
        return None
    if alpha.numel() != 1:
        raise CheckpointError(f"{source}: {module}.alpha has shape {list(alpha.shape)}; alpha is one number")
    return float(alpha.float().item())


def _low_rank(module: str, parts: dict, source: str, scale_for: Callable[[int], float]) -> LowRank:
    up, down = parts.get("up"), parts.get("down")
    if up is None or down is None:
        missing = "lora_B / lora_up" if up is None else "lora_A / lora_down"
        raise CheckpointError(f"{source}: {module!r} has no {missing} tensor (each LoRA weight needs both factors)")
    if up.dim() < 2 or down.dim() < 2 or up.shape[1] != down.shape[0] or any(s != 1 for s in up.shape[2:]):
        raise CheckpointError(
            f"{source}: {module!r}: LoRA factors of mismatched rank: up {list(up.shape)}, down {list(down.shape)} "
            "(expected up [out, r] and down [r, in] with the same r)")
    return LowRank(up, down, scale_for(down.shape[0]))


def _kronecker(module: str, parts: dict, source: str) -> Kronecker:
    w1, w1_a, w1_b, w2, w2_a, w2_b, t2 = (parts.get(r) for r in LOKR_ROLES)

    def fail(what: str):
        shapes = ", ".join(f"lokr_{r} {list(parts[r].shape)}" for r in LOKR_ROLES if r in parts)
        raise CheckpointError(f"{source}: {module!r}: {what} ({shapes})")

    for whole, a, b, label in ((w1, w1_a, w1_b, "w1"), (w2, w2_a, w2_b, "w2")):
        if (whole is None) == (a is None or b is None) or (whole is not None and (a is not None or b is not None)):
            fail(f"LoKr needs lokr_{label} or both lokr_{label}_a and lokr_{label}_b")
    if w1 is not None and w1.dim() != 2:
        fail("lokr_w1 must be a matrix")
    if w1 is None and (w1_a.dim() != 2 or w1_b.dim() != 2 or w1_a.shape[1] != w1_b.shape[0]):
        fail("lokr_w1_a and lokr_w1_b are not [a, r] and [r, c] with the same r")
    if t2 is not None:
        if w2 is not None or w2_a.dim() != 2 or w2_b.dim() != 2 or t2.dim() < 3 \
                or t2.shape[0] != w2_a.shape[0] or t2.shape[1] != w2_b.shape[0]:
            fail("a Tucker LoKr needs lokr_t2 [r, r, k…], lokr_w2_a [r, b] and lokr_w2_b [r, d]")
    elif w2 is None and (w2_a.dim() != 2 or w2_b.dim() < 2 or w2_a.shape[1] != w2_b.shape[0]):
        fail("lokr_w2_a and lokr_w2_b are not [b, r] and [r, d…] with the same r")
    elif w2 is not None and w2.dim() < 2:
        fail("lokr_w2 must have at least two dimensions")

    # The rank is that of the factored half; with both halves whole LyCORIS applies them unscaled.
    alpha = _alpha(module, parts, source)
    rank = w2_b.shape[0] if w2_b is not None else w1_b.shape[0] if w1_b is not None else None
    scale = 1.0
    if alpha is not None and rank is not None:
        scale = _checked_scale(alpha / rank, alpha, rank, f"key {module + '.alpha'!r}", source)
    return Kronecker(w1, w1_a, w1_b, w2, w2_a, w2_b, t2, scale)


def _with_magnitude(module: str, parts: dict, source: str, update) -> Target:
    magnitude, dora_scale = parts.get("magnitude"), parts.get("dora_scale")
    if magnitude is not None and dora_scale is not None:
        raise CheckpointError(f"{source}: {module!r} has both lora_magnitude_vector and dora_scale")
    if dora_scale is not None:  # LyCORIS: [out, 1] per output channel, [1, in] per input channel
        per_output = not (dora_scale.dim() >= 2 and dora_scale.shape[0] == 1 and update.shape[0] != 1)
        return Target(module, update, dora_scale, per_output)
    return Target(module, update, magnitude, True)


def _load_file(path: str, given: str) -> Adapter:
    """A single safetensors adapter: LyCORIS (LoKr, LoCon), ComfyUI, kohya-style, diffusers or bare PEFT keys."""
    tensors = _read_tensors(path)
    targets, notes = [], []
    for module, parts in _group(tensors, path).items():
        lokr = [r for r in LOKR_ROLES if r in parts]
        lora = [r for r in ("up", "down") if r in parts]
        if lokr and lora:
            raise CheckpointError(f"{path}: {module!r} mixes LoRA and LoKr tensors")
        if lokr:
            update = _kronecker(module, parts, path)
        elif lora:
            alpha = _alpha(module, parts, path)
            if alpha is None and not notes:
                notes.append("no alpha in the file: applied at scale 1 (alpha = rank), as ComfyUI does")
            update = _low_rank(module, parts, path, lambda rank: 1.0 if alpha is None else _checked_scale(
                alpha / rank, alpha, rank, f"key {module + '.alpha'!r}", path))
        else:
            raise CheckpointError(f"{path}: {module!r} has only {', '.join(parts)}: no LoRA or LoKr factors")
        targets.append(_with_magnitude(module, parts, path, update))
    return Adapter(given, path, _kind(targets, lokr_name="LyCORIS LoKr"), tuple(targets), tuple(notes))


def _kind(targets: list[Target], lokr_name: str = "LoKr", lora_name: str = "LoRA") -> str:
    kinds = {lokr_name if isinstance(t.update, Kronecker) else lora_name for t in targets}
    kind = " + ".join(sorted(kinds))
    return kind + (" + DoRA" if any(t.magnitude is not None for t in targets) else "")


def _peft_pattern(patterns: dict, module: str, config_path: str) -> str | None:
    """The rank_pattern / alpha_pattern entry PEFT uses for ``module`` (a regex matching its name's tail)."""
    for pattern in patterns:
        try:
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                return pattern
        except re.error as e:
            raise CheckpointError(f"{config_path}: pattern {pattern!r} is not a valid regular expression: {e}") \
                from None
    return None


def _load_peft(folder: str, given: str) -> Adapter:
    config_path = os.path.join(folder, PEFT_CONFIG_FILE)
    config = read_json(config_path)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type is {config.get('peft_type')!r}; the pack applies PEFT "
                              "adapters of type 'LORA'")
    for option in PEFT_UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise CheckpointError(f"{config_path}: {option} = {config[option]!r} is not supported (the pack applies "
                                  "LoRA and DoRA weight changes only)")
    weights = os.path.join(folder, PEFT_WEIGHTS_FILE)
    if not os.path.isfile(weights):
        pickled = os.path.join(folder, "adapter_model.bin")
        _refuse_pickle(pickled if os.path.isfile(pickled) else weights)
        raise CheckpointError(f"{weights}: missing (a PEFT folder holds {PEFT_CONFIG_FILE} and {PEFT_WEIGHTS_FILE})")
    r, lora_alpha = config.get("r", PEFT_DEFAULT_R), config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    for name, value in (("r", r), ("lora_alpha", lora_alpha), *rank_pattern.items(), *alpha_pattern.items()):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise CheckpointError(f"{config_path}: {name} = {value!r}; expected a positive finite number")
    use_rslora, use_dora = bool(config.get("use_rslora")), bool(config.get("use_dora"))

    tensors = _read_tensors(weights)
    targets = []
    for module, parts in _group(tensors, weights).items():
        extra = sorted(set(parts) - {"up", "down", "magnitude"})
        if extra:
            raise CheckpointError(f"{weights}: {module!r} has {', '.join(extra)} tensors, which a PEFT LoRA file "
                                  "does not hold")
        if use_dora != ("magnitude" in parts):
            raise CheckpointError(f"{weights}: {module!r} {'lacks' if use_dora else 'has'} lora_magnitude_vector but "
                                  f"{PEFT_CONFIG_FILE} says use_dora = {use_dora}")
        name = module[len("base_model.model."):] if module.startswith("base_model.model.") else module
        rank_key = _peft_pattern(rank_pattern, name, config_path)
        alpha_key = _peft_pattern(alpha_pattern, name, config_path)
        expected_rank = rank_pattern[rank_key] if rank_key is not None else r
        alpha = alpha_pattern[alpha_key] if alpha_key is not None else lora_alpha

        def scale_for(rank: int, module=module, expected_rank=expected_rank, alpha=alpha) -> float:
            if rank != expected_rank:
                raise CheckpointError(f"{weights}: {module!r} has rank {rank} but {PEFT_CONFIG_FILE} says r = "
                                      f"{expected_rank}")
            divisor = math.sqrt(rank) if use_rslora else rank
            what = f"alpha_pattern[{alpha_key!r}]" if alpha_key is not None else "lora_alpha"
            return _checked_scale(alpha / divisor, alpha, divisor, what, config_path)

        targets.append(_with_magnitude(module, parts, weights, _low_rank(module, parts, weights, scale_for)))
    return Adapter(given, weights, _kind(targets, lora_name="PEFT LoRA"), tuple(targets))


def list_adapters(root: str) -> list[str]:
    """Adapters under ``root`` as relative names ("/"-separated): PEFT and LoKr folders as folders, and the
    .safetensors files outside them. For a LoRA list that shows official folders next to single files."""
    found = []
    for folder, subdirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(folder, root)
        if rel != "." and (PEFT_CONFIG_FILE in files or LOKR_WEIGHTS_FILE in files):
            found.append(rel.replace(os.sep, "/"))
            subdirs[:] = []
            continue
        found += [os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/")
                  for f in files if f.endswith(".safetensors")]
    return sorted(found)


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """'PATH[:STRENGTH]' → (path, strength), strength 1.0 when absent. Only a number after the last ':'
    counts as a strength, so Windows paths (C:\\loras\\x.safetensors) stay whole; a non-finite one is an
    InputError."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            strength = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(strength):
            raise InputError(f"strength of LoRA {path}", strength, "a finite number (negative and above 1 are fine)")
        return path, strength
    return spec, 1.0


# --------------------------------------------------------------------------- binding to a model


_DIFFUSERS_RENAMES = ((".q_proj", ".to_q"), (".k_proj", ".to_k"), (".v_proj", ".to_v"), (".o_proj", ".to_out.0"),
                      ("proj_in.1", "proj_in_conv"), ("proj_out.1", "proj_out_conv"))


def _spellings(name: str) -> set[str]:
    """The names an adapter file may use for the module ``name`` of our model (before any key prefix)."""
    from .models.model import to_checkpoint_keys

    original = next(iter(to_checkpoint_keys({name + ".weight": None})))[: -len(".weight")]
    names = {name, original}
    if name.startswith("decoder."):
        relative = {n[len("decoder."):] for n in names}
        diffusers = set()
        for n in relative:
            for old, new in _DIFFUSERS_RENAMES:
                n = n.replace(old, new)
            diffusers.add(n)
        names |= relative | diffusers
    return names | {n.replace(".", "_") for n in names}


def patchable_weights(model: nn.Module) -> dict[str, str]:
    """Every spelling of a weight adapters may change (Linear and Conv1d) → its parameter name in ``model``."""
    index: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, (nn.Linear, nn.Conv1d)):
            continue
        param = name + ".weight"
        for spelling in _spellings(name):
            if index.setdefault(spelling, param) != param:
                raise RuntimeError(f"adapter name {spelling!r} is ambiguous: {index[spelling]} and {param}")
    return index


def _resolve(key: str, index: dict[str, str]) -> str | None:
    for prefix in ADAPTER_KEY_PREFIXES:
        if key.startswith(prefix) and key[len(prefix):] in index:
            return index[key[len(prefix):]]
    return None


def _model_size(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "is_xl"):
        return ""
    return (f" (this model is the {'XL' if cfg.is_xl else '2B'} DiT: hidden size {cfg.hidden_size}, "
            f"{cfg.num_hidden_layers} layers)")


def _unmatched_error(adapter: Adapter, keys: list[str], model: nn.Module) -> CheckpointError:
    first = ", ".join(repr(k) for k in keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
    hint = ""
    cfg = getattr(model, "config", None)
    layer = re.search(r"layers[._](\d+)[._]", keys[0])
    if cfg is not None and layer and int(layer.group(1)) >= cfg.num_hidden_layers and "encoder" not in keys[0]:
        hint = f": layer {layer.group(1)} does not exist, the LoRA was made for a different model size"
    elif "lora_te" in keys[0] or "text_encoder" in keys[0]:
        hint = ": text-encoder weights; the pack applies adapters to the diffusion model only"
    return CheckpointError(f"{adapter.source}: {len(keys)} adapter key(s) match no Linear or Conv1d weight of the "
                           f"model, first {first}{hint}{_model_size(model)}")


def bind(adapter: Adapter, model: nn.Module) -> dict[str, Target]:
    """Parameter name in ``model`` → the target changing it. Every target must name a patchable weight of the
    right shape; otherwise a CheckpointError names the file and the first offending key."""
    index = patchable_weights(model)
    bound: dict[str, Target] = {}
    unmatched = []
    for target in adapter.targets:
        name = _resolve(target.key, index)
        if name is None:
            unmatched.append(target.key)
            continue
        weight = model.get_parameter(name)
        if tuple(target.update.shape) != (weight.shape[0], math.prod(weight.shape[1:])):
            raise CheckpointError(
                f"{adapter.source}: shape mismatch, made for another model size (2B vs XL?): {target.key!r} changes "
                f"a {list(target.update.shape)} weight but {name} is {list(weight.shape)}{_model_size(model)}")
        if target.magnitude is not None:
            channels = weight.shape[0] if target.per_output else weight.shape[1]
            if target.magnitude.numel() != channels:
                raise CheckpointError(
                    f"{adapter.source}: {target.key!r}: DoRA magnitude of shape {list(target.magnitude.shape)} for "
                    f"{name} {list(weight.shape)}; expected {channels} values")
        if name in bound:
            raise CheckpointError(f"{adapter.source}: {bound[name].key!r} and {target.key!r} both change {name}")
        bound[name] = target
    if unmatched:
        raise _unmatched_error(adapter, unmatched, model)
    return bound


def check_fit(adapters: Iterable[tuple[Adapter, float]], config: AceStepConfig) -> None:
    """Bind every adapter to a model of ``config`` built on the meta device (shapes, no weights), so a LoRA made
    for the other model size or with unknown keys is refused before any weight is read; raises CheckpointError
    naming the file and the first offending key."""
    from .models.model import AceStepModel

    with torch.device("meta"):
        model = AceStepModel(config)
    for adapter, _ in adapters:
        bind(adapter, model)


def resolve_adapters(adapters: Iterable[tuple[Adapter | str | os.PathLike, float]]) -> list[tuple[Adapter, float]]:
    """(adapter or path, strength) pairs → (Adapter, strength), reading the files given as paths."""
    out = []
    for item in adapters:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError("adapters", item, "(adapter or path, strength) pairs")
        adapter, strength = item
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise InputError(f"strength of LoRA {adapter}", strength, "a number (negative and above 1 are fine)")
        out.append((adapter if isinstance(adapter, Adapter) else load_adapter(adapter), float(strength)))
    return out


# --------------------------------------------------------------------------- deltas and patching


class WeightDeltas(Mapping):
    """The weight changes of a stack of adapters on one model: parameter name → ΔW (float32, strengths in).

    A value is computed when it is asked for, one weight at a time, from the adapters' small factors, so a
    stack never holds a dense copy of the model. DoRA changes depend on the base weight: read values while
    the model is unpatched, or call ``delta(name, base_weight)`` with the original weight.
    """

    def __init__(self, model: nn.Module, stack: dict[str, list[tuple[Target, float]]]):
        self._model = model
        self._stack = stack
        self.shapes = {name: tuple(model.get_parameter(name).shape) for name in stack}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._stack:
            raise KeyError(name)
        return self.delta(name, self._model.get_parameter(name).detach())

    def __iter__(self) -> Iterator[str]:
        return iter(self._stack)

    def __len__(self) -> int:
        return len(self._stack)

    def delta(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """Σ strength · ΔW for parameter ``name`` given its unpatched weight (a new float32 tensor on its
        device)."""
        total = None
        for target, strength in self._stack[name]:
            change = target.delta(base_weight, strength)
            total = change if total is None else total.add_(change)
        return total

    def patch(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """The patched weight: base + Σ strength · ΔW added in float32, then cast to the base's dtype.
        (Three passes over the weight: the change, the sum in place, the cast.)"""
        return self.delta(name, base_weight).add_(base_weight).to(base_weight.dtype)


def weight_deltas(model: nn.Module, adapters: Iterable[tuple[Adapter, float]]) -> WeightDeltas:
    """Bind a stack of (adapter, strength) to ``model`` (every adapter checked, even at strength 0) and
    return its weight changes. Strength is any finite float: 0 leaves the model as it is, negative subtracts."""
    stack: dict[str, list[tuple[Target, float]]] = {}
    for adapter, strength in adapters:
        strength = float(strength)
        if not math.isfinite(strength):
            raise InputError(f"strength of LoRA {adapter.name}", strength,
                             "a finite number (negative and above 1 are fine)")
        bound = bind(adapter, model)
        if strength == 0.0:
            continue
        for name, target in bound.items():
            stack.setdefault(name, []).append((target, strength))
    return WeightDeltas(model, stack)


_PATCHED_FLAG = "_acestep_adapters_patched"


@contextmanager
def patched(model: nn.Module, deltas: WeightDeltas, offload_originals: bool = False):
    """Run the block with ``deltas`` added to ``model``'s weights, then put the original tensors back.

    Each weight is patched on its own device, one at a time: its ΔW is computed in float32, added to the
    weight in float32 and the sum cast to the weight's dtype (no float32 copy of the model). The original
    tensors are kept and put back as they are, so the weights after the block are bit-identical (they are
    the same tensors), also when the block raises. ``offload_originals`` keeps them on the CPU meanwhile
    (saves device memory the size of the patched weights; costs a copy each way). A layer that stores its
    weight in another form (``memory.fp8.Fp8Linear``: float8 with scales) patches itself through its
    ``patch_weight(change) -> restore``.
    """
    if getattr(model, _PATCHED_FLAG, False):
        raise RuntimeError("this model is already patched with adapters; leave that patched() block first")
    originals: dict[str, torch.Tensor] = {}
    restores = []
    object.__setattr__(model, _PATCHED_FLAG, True)
    try:
        for name in deltas:
            param = model.get_parameter(name)
            if tuple(param.shape) != deltas.shapes[name]:
                raise ValueError(f"{name} is {list(param.shape)} in this model, the deltas were made for "
                                 f"{list(deltas.shapes[name])}")
            owner = model.get_submodule(name.rpartition(".")[0])
            if hasattr(owner, "patch_weight"):
                restores.append(owner.patch_weight(lambda weight, n=name: deltas.patch(n, weight)))
                continue
            original = param.data
            new = deltas.patch(name, original)
            originals[name] = original.cpu() if offload_originals else original
            param.data = new
        yield model
    finally:
        for restore in reversed(restores):
            restore()
        for name, original in originals.items():
            param = model.get_parameter(name)
            param.data = original if original.device == param.device else original.to(param.device)
        object.__setattr__(model, _PATCHED_FLAG, False)
