#!/usr/bin/env python
"""The low-VRAM GPU check: a 240-s turbo text2music under emulated card sizes, time and peak memory per phase.

Full-size random weights (2B turbo DiT checkpoint, Qwen3-Embedding-0.6B, the Oobleck VAE, a 1.7B 5 Hz LM in
transformers' Qwen3 layout; XL turbo with fp8 decoder weights) are made on the GPU and parked in CPU memory.
Each run caps the process with ``torch.cuda.set_per_process_memory_fraction`` at the budget and lets
``acestep_core.memory`` plan it (units taking turns, DiT/LM layers streamed, the VAE tile):

    2b        2B turbo alone at 24, 8, 6, 4 GB
    2b+lm     the 1.7B LM first (prefill of a 2.3k-token prompt over a KV cache sized for the whole song, then
              --lm-tokens decode steps with CFG, timed and extrapolated to the song's 1,200 codes), then the 2B
    xl-fp8    XL turbo with fp8_e4m3fn decoder weights at 12 and 8 GB
    fp8-error velocity and final latents of the 2B with fp8 (e4m3fn, e5m2, e4m3fn_fast) against bf16, same seed

Per run and phase: seconds and ``torch.cuda.max_memory_allocated`` next to the planner's estimate. Results go to
``--json`` (and a markdown table on stdout). On a CPU, ``--smoke`` runs tiny geometries through the same code.

    python bench/bench_lowvram.py --json lowvram.json        # one GPU, ~5 min
    python bench/bench_lowvram.py --smoke                    # tiny, any machine
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from acestep_core.constants import LM_GEOMETRIES, QWEN3_EMBEDDING_GEOMETRY, XL_DIT_GEOMETRY  # noqa: E402
from acestep_core.loading.checkpoint import AceStepCheckpoint, DitCheckpoint  # noqa: E402
from acestep_core.loading.text import load_tokenizer  # noqa: E402
from acestep_core.memory.estimates import GIB  # noqa: E402
from acestep_core.memory.fp8 import FP8_FORMATS, quantize_linears  # noqa: E402
from acestep_core.memory.estimates import decoder_fp8  # noqa: E402
from acestep_core.memory.manager import MemoryManager, MemorySettings  # noqa: E402
from acestep_core.models.config import AceStepConfig  # noqa: E402
from acestep_core.models.model import AceStepModel  # noqa: E402
from acestep_core.models.text_encoder import TextEncoder  # noqa: E402
from acestep_core.models.vae import OobleckVAE, VaeConfig  # noqa: E402
from acestep_core.pipeline import AceStepPipeline  # noqa: E402
from acestep_core.request import request  # noqa: E402

XL = XL_DIT_GEOMETRY
SMOKE_DIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_lyric_encoder_hidden_layers=2,
                 num_timbre_encoder_hidden_layers=1, num_attention_pooler_hidden_layers=1, fsq_dim=64,
                 text_hidden_dim=32)
SMOKE_QWEN = dict(vocab_size=151669, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
SMOKE_LM = dict(SMOKE_QWEN, vocab_size=217204, num_hidden_layers=4)
SMOKE_VAE = VaeConfig(encoder_hidden_size=16, channel_multiples=(1, 2), downsampling_ratios=(2, 4), decoder_channels=4,
                      decoder_input_channels=64, sampling_rate=200)
LYRICS = "[verse]\n" + "la " * 3000  # cut at 2048 tokens: the longest condition


# ------------------------------------------------------------------------------------------------ random weights


@torch.no_grad()
def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random values with O(1) activations: norms 1, biases 0, matrices ~ 1/sqrt(fan_in), tables 0.02."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if "norm" in name and name.endswith("weight") and p.dim() == 1:
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        elif p.dim() >= 2 and not name.endswith(("scale_shift_table", "special_token", "special_tokens")):
            fan_in = p.shape[0] if name.endswith("proj_out.weight") and p.dim() == 3 else math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) / fan_in ** 0.5)
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32))
    return module


def build(module_fn, device, dtype, seed):
    with torch.device("meta"):
        module = module_fn()
    module = module.to_empty(device=device)
    return randomize(module, seed).to(dtype).eval().requires_grad_(False)


def make_dit(config: AceStepConfig, device, dtype, weight_dtype="default"):
    model = build(lambda: AceStepModel(config), device, dtype, 1)
    model.match_rope_rounding(dtype)
    if weight_dtype != "default":
        quantize_linears(model, FP8_FORMATS[weight_dtype], weight_dtype.endswith("_fast"), decoder_fp8)
    return model


def make_text_encoder(geometry, device, dtype):
    from transformers import Qwen3Config, Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    config = Qwen3Config(**geometry)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    model = build(lambda: Qwen3Model(config), device, dtype, 2)
    with torch.device(device):
        model.rotary_emb = Qwen3RotaryEmbedding(config)
    return TextEncoder(model).eval()


def make_vae(config: VaeConfig, device, dtype):
    return build(lambda: OobleckVAE(config), device, dtype, 3)


def make_lm(geometry, device, dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**geometry)
    config._attn_implementation = "sdpa"
    model = build(lambda: Qwen3ForCausalLM(config), device, dtype, 4)
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
    with torch.device(device):
        model.model.rotary_emb = Qwen3RotaryEmbedding(config)
    model.tie_weights()
    return model


def checkpoint(model, text_encoder, vae) -> AceStepCheckpoint:
    silence = torch.zeros(1, 15000, model.config.audio_acoustic_hidden_dim, dtype=model.dtype)
    return AceStepCheckpoint(DitCheckpoint(model, "turbo", "bench", "random weights"), vae, text_encoder,
                             load_tokenizer(), silence)


def park(*modules):
    """Everything in CPU memory, the GPU empty: the state a run starts from."""
    for m in modules:
        if m is not None:
            m.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ measuring


class PhaseMeter:
    """Wraps the memory manager's ``use``: each call starts a phase; records seconds and the CUDA peak of the
    phase that ended."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows, self.label, self.t = cuda, [], None, time.perf_counter()

    def mark(self, label):
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.label is not None:
            peak = torch.cuda.max_memory_allocated() if self.cuda else 0
            self.rows.append({"phase": self.label, "seconds": now - self.t, "peak_gb": peak / GIB})
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.label, self.t = label, now

    def wrap(self, manager: MemoryManager):
        use = manager.use

        def timed_use(parts):
            names = set(parts)
            seen = {r["phase"] for r in self.rows} | {self.label}
            label = ("lm" if names == {"lm"} else "render" if names == {"vae"} else "condition" if "text_encoder" in
                     names else "sample" if names == {"model"} and "condition" in seen else "inputs")
            if label != self.label:
                self.mark(label)
            use(parts)

        manager.use = timed_use


@torch.no_grad()
def lm_phase(lm, manager, meter, codes: int, decode_tokens: int, prompt_tokens: int, device):
    """The LM's work for one song: a CFG pair of prompts prefilled into a KV cache sized for the whole song, then
    ``decode_tokens`` steps (the rest extrapolated)."""
    from transformers import DynamicCache

    manager.use(("lm",))
    cache = DynamicCache()
    vocab = lm.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, vocab, (2, prompt_tokens + codes - decode_tokens), generator=g).to(device)
    out = lm(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].float().argmax(-1, keepdim=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        out = lm(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].float().argmax(-1, keepdim=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    per_token = (time.perf_counter() - t0) / decode_tokens
    del cache, out
    return per_token


def run_song(units: dict, config, budget_gb: float | None, device, dtype, seconds: float, steps: int,
             lm_tokens: int = 0, lm_size: str | None = None, settings: MemorySettings | None = None) -> dict:
    cuda = device.type == "cuda"
    park(*units.values())
    if cuda and budget_gb is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GIB / total), device)
    settings = settings or MemorySettings(budget_gb=None if cuda else budget_gb)
    ckpt = checkpoint(units["model"], units["text_encoder"], units["vae"])
    core = {k: v for k, v in units.items() if v is not None}
    manager = MemoryManager(core, device, config, dtype, settings, lm_size=lm_size if "lm" in core else None)
    pipe = AceStepPipeline(ckpt, placement=manager)
    meter = PhaseMeter(cuda)
    meter.wrap(manager)
    req = request(caption="energetic synth-pop, female vocals", lyrics=LYRICS, duration=seconds, seed=7,
                  steps=steps, bpm=120, keyscale="A minor", timesignature="4")
    row = {"budget_gb": budget_gb, "lm": lm_size, "error": None}
    t0 = time.perf_counter()
    try:
        if "lm" in core:
            from acestep_core.memory.estimates import Workload
            manager.prepare(Workload(seconds, 1, lm_codes=int(seconds * 5)))
            per_token = lm_phase(core["lm"], manager, meter, int(seconds * 5), lm_tokens, 2300, device)
            row["lm_seconds_per_token"] = per_token
            row["lm_seconds_extrapolated"] = per_token * (int(seconds * 5) - lm_tokens)
        result = pipe(req)
        meter.mark(None)
        row["memory"] = result.metadata.get("memory")
        row["plan"] = manager.plan.describe()
        row["estimate_gb"] = {k: v / GIB for k, v in manager.plan.peaks.items()}
        row["vae"] = result.vae_run.describe() if result.vae_run else None
        row["finite"] = bool(torch.isfinite(result.audio).all())
    except torch.OutOfMemoryError as e:
        meter.mark(None)
        row["error"] = "out of memory: " + str(e).splitlines()[0][:200]
    row["seconds"] = time.perf_counter() - t0 + row.get("lm_seconds_extrapolated", 0.0)
    row["phases"] = meter.rows
    row["peak_gb"] = max((r["peak_gb"] for r in meter.rows), default=0.0)
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    del pipe, manager
    park(*units.values())
    for m in units.values():  # a later run starts from plain layer lists
        if m is not None:
            from acestep_core.memory.streaming import unstream_layers
            for owner, attribute in ((getattr(m, "decoder", None), "layers"), (getattr(m, "model", None), "layers")):
                if owner is not None and isinstance(getattr(owner, attribute, None), nn.ModuleList):
                    unstream_layers(owner, attribute)
    return row


# ------------------------------------------------------------------------------------------------ GPU checks


@torch.no_grad()
def stream_check(config, device) -> dict:
    """The decoder's velocity and cross-attention K/V with layers streamed on a side stream (resident 4, 2 buffers,
    pinned CPU copies) against the fully resident decoder: must be bit-identical."""
    from acestep_core.memory.streaming import stream_layers, unstream_layers

    model = make_dit(config, device, torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(2, 3000, 64, generator=g).to(device, torch.bfloat16)
    context = torch.randn(2, 3000, config.in_channels - 64, generator=g).to(device, torch.bfloat16)
    enc = torch.randn(2, 400, config.encoder_hidden_size or config.hidden_size, generator=g).to(device, torch.bfloat16)
    t = torch.tensor([0.6, 0.3], device=device, dtype=torch.bfloat16)
    decoder = model.decoder

    def run():
        kv = decoder.cross_kv(enc)
        return decoder(x, t, context, kv), kv

    expected, expected_kv = run()
    resident = 4 if len(decoder.layers) > 8 else 1
    stack = stream_layers(decoder, "layers", resident, lambda: device, slots=2, pin=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    got, got_kv = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    streamed_s = time.perf_counter() - t0
    unstream_layers(decoder, "layers")
    decoder.to(device)
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    resident_s = time.perf_counter() - t0
    same = torch.equal(got, expected) and all(torch.equal(a, b) for p, q in zip(got_kv, expected_kv)
                                                for a, b in zip(p, q))
    del model
    return {"bit_identical": same, "copies": stack.streamer.copies, "streamed_pass_s": streamed_s,
            "resident_pass_s": resident_s, "streamed_layers": len(decoder.layers) - resident}


# ------------------------------------------------------------------------------------------------ fp8 error


@torch.no_grad()
def fp8_error(config, device, seconds: float, steps: int, smoke: bool) -> list[dict]:
    """Velocity (one forward, random inputs) and final latents (a whole turbo song) of fp8 models against the
    bf16 model with the same random weights and seed."""
    from acestep_core.memory.fp8 import Fp8Linear

    rows = []
    reference = make_dit(config, device, torch.bfloat16)
    te = make_text_encoder(SMOKE_QWEN if smoke else QWEN3_EMBEDDING_GEOMETRY, device, torch.bfloat16)
    vae = make_vae(SMOKE_VAE if smoke else VaeConfig(), device, torch.float32)
    g = torch.Generator(device="cpu").manual_seed(0)
    frames = int(seconds * 25)
    x = torch.randn(1, frames, 64, generator=g).to(device, torch.bfloat16)
    context = torch.randn(1, frames, config.in_channels - 64, generator=g).to(device, torch.bfloat16)
    enc = torch.randn(1, 300, config.encoder_hidden_size or config.hidden_size, generator=g).to(device, torch.bfloat16)
    t = torch.tensor([0.6], device=device, dtype=torch.bfloat16)
    req = request(caption="synth pop", lyrics="[verse]\nla la", duration=seconds, seed=3, steps=steps)

    def velocity(model):
        return model.decoder(x, t, context, model.decoder.cross_kv(enc)).float()

    v_ref = velocity(reference)
    l_ref = AceStepPipeline(checkpoint(reference, te, vae))(req).latents
    for weight_dtype in ("fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fn_fast"):
        model = make_dit(config, device, torch.bfloat16, weight_dtype)
        fast = any(isinstance(m, Fp8Linear) and m.fast for m in model.modules())
        v = velocity(model)
        lat = AceStepPipeline(checkpoint(model, te, vae))(req).latents
        rows.append({"weight_dtype": weight_dtype, "fast": fast,
                     "velocity_rel_l2": float((v - v_ref).norm() / v_ref.norm()),
                     "latents_rel_l2": float((lat - l_ref).norm() / l_ref.norm())})
        del model
    del reference, te, vae
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny geometries (checks the script on any machine)")
    ap.add_argument("--only", default="stream-check,2b,2b+lm,xl-fp8,fp8-error", help="comma-separated parts to run")
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lm-tokens", type=int, default=48, help="LM decode steps timed (the rest extrapolated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    smoke = args.smoke
    seconds = 20.0 if smoke else args.seconds
    only = set(args.only.split(","))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "seconds": seconds, "steps": args.steps, "runs": [], "fp8_error": []}
    print(f"# low-VRAM bench on {info['device']} (torch {torch.__version__}), {seconds:g}-s turbo, {args.steps} steps",
          flush=True)
    two_b = AceStepConfig(**SMOKE_DIT) if smoke else AceStepConfig()
    xl = AceStepConfig(**{**SMOKE_DIT, "hidden_size": 96, "intermediate_size": 192, "encoder_hidden_size": 64,
                          "encoder_intermediate_size": 128, "encoder_num_attention_heads": 4,
                          "encoder_num_key_value_heads": 2}) if smoke else AceStepConfig(**XL)
    budgets = (1.0, 0.2, 0.1, 0.05) if smoke else (24.0, 8.0, 6.0, 4.0)

    def report(row, name):
        row["name"] = name
        info["runs"].append(row)
        phases = " · ".join(f"{r['phase']} {r['seconds']:.2f}s {r['peak_gb']:.2f}GB" for r in row["phases"])
        print(f"{name:8s} {row['budget_gb']:>5} GB  {row['seconds']:7.2f}s  peak {row['peak_gb']:.2f} GB  "
              f"{row.get('error') or ''}\n    {row.get('plan')}\n    {phases}\n    estimate "
              f"{ {k: round(v, 2) for k, v in row.get('estimate_gb', {}).items()} }", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(info, f, indent=1)

    build_device = device
    if "stream-check" in only:
        try:
            info["stream_check"] = stream_check(AceStepConfig(**SMOKE_DIT) if smoke else AceStepConfig(), device)
        except Exception:
            info["stream_check"] = {"error": traceback.format_exc()[-2000:]}
        print(f"stream check: {info['stream_check']}", flush=True)
    te_geo = SMOKE_QWEN if smoke else QWEN3_EMBEDDING_GEOMETRY
    vae_cfg = SMOKE_VAE if smoke else VaeConfig()
    failures = []

    def part(name, fn):
        if name not in only:
            return
        try:
            fn()
        except Exception:
            traceback.print_exc()
            failures.append(f"{name}: {traceback.format_exc()[-2500:]}")
        park()

    def songs_2b():
        units = {"model": make_dit(two_b, build_device, dtype), "text_encoder": make_text_encoder(te_geo,
                 build_device, dtype), "vae": make_vae(vae_cfg, build_device, dtype)}
        if "2b" in only:
            for gb in budgets:
                report(run_song(dict(units), two_b, gb, device, dtype, seconds, args.steps), "2b")
        if "2b+lm" in only:
            lm = make_lm(SMOKE_LM if smoke else LM_GEOMETRIES["1.7B"], build_device, dtype)
            for gb in budgets:
                report(run_song({**units, "lm": lm}, two_b, gb, device, dtype, seconds, args.steps,
                                lm_tokens=args.lm_tokens, lm_size="1.7B"), "2b+lm")

    def songs_xl():
        units = {"model": make_dit(xl, build_device, dtype, "fp8_e4m3fn"),
                 "text_encoder": make_text_encoder(te_geo, build_device, dtype),
                 "vae": make_vae(vae_cfg, build_device, dtype)}
        for gb in ((0.5, 0.2) if smoke else (12.0, 8.0)):
            report(run_song(dict(units), xl, gb, device, dtype, seconds, args.steps,
                            settings=MemorySettings(weight_dtype="fp8_e4m3fn",
                                                    budget_gb=None if device.type == "cuda" else gb)), "xl-fp8")

    def error():
        info["fp8_error"] = fp8_error(two_b, device, min(seconds, 60.0), args.steps, smoke)
        for r in info["fp8_error"]:
            print(f"fp8 {r['weight_dtype']:16s} fast={r['fast']!s:5s} velocity {r['velocity_rel_l2']:.4f}  "
                  f"latents {r['latents_rel_l2']:.4f}", flush=True)

    only |= {"songs-2b"} if only & {"2b", "2b+lm"} else set()
    part("songs-2b", songs_2b)
    part("xl-fp8", songs_xl)
    part("fp8-error", error)
    if failures:
        info["failure"] = failures
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    print(markdown(info))
    return 1 if "failure" in info else 0


def markdown(info) -> str:
    lines = ["\n| run | budget | time (s) | peak GB | phases (s / GB) | plan |", "|---|---|---|---|---|---|"]
    for r in info["runs"]:
        phases = ", ".join(f"{p['phase']} {p['seconds']:.2f}/{p['peak_gb']:.2f}" for p in r["phases"])
        lines.append(f"| {r['name']} | {r['budget_gb']:g} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {phases} | "
                     f"{r.get('error') or r.get('plan')} |")
    for r in info["fp8_error"]:
        lines.append(f"| fp8 error {r['weight_dtype']} | | | | velocity {r['velocity_rel_l2']:.4f}, latents "
                     f"{r['latents_rel_l2']:.4f} | fast={r['fast']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
