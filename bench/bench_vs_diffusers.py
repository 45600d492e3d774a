#!/usr/bin/env python
"""Times acestep_core against the diffusers 0.42.1 port of ACE-Step 1.5 on the same machine, job and weights.

Rows (``--rows``, any of them):
  dit_step    one DiT forward (2B turbo geometry, 30 s = 750 latent frames, batch 1) with a packed condition
              of 641 tokens (512 lyric + 1 timbre + 128 caption). Ours takes the per-layer cross-attention
              K/V precomputed (the sampler computes them once per generation); diffusers projects the
              condition inside every step. The child also times our ``cross_kv`` on its own, and the
              table shows "step + cross K/V" as the like-for-like single-call comparison.
  condition   the condition encoder: caption hidden [1,128,1024] → projector, lyrics [1,512,1024] → 8-layer
              lyric encoder, timbre reference [1,750,64] → 4-layer timbre encoder, packing.
  vae_decode  Oobleck VAE decode of a [1,64,750] latent (30 s of 48 kHz stereo), tiled 512/64 (ours:
              ``tiled_decode``; diffusers: ``enable_tiling()``, same tile and overlap) and untiled
              (ours: ``vae.decode``; diffusers: ``vae.decode`` as its pipeline calls it).
  pipeline    a whole 30-s turbo text2music (8 steps, shift 3, no CFG, decode included): caption/lyrics →
              audio, from loaded models. The child also reports per-stage times (forward hooks) and the
              load time.

Every (row, implementation, dtype) runs in its own subprocess, so ``ru_maxrss`` of the child is that
implementation's peak RSS for the row (weights included). Both sides load the same full-size random weights,
written once to a temporary folder in the official Hugging Face layout (DiT in bf16, VAE in fp32 with weight
norm, Qwen3-Embedding-0.6B geometry in bf16). The diffusers modules are built without running their random
initialisers and take the tensors by assignment (what ``from_pretrained(low_cpu_mem_usage=True)`` does), so
neither side pays for a throw-away init; both read the files with the same safetensors reader (memory-mapped,
no copy when the stored dtype is the one asked for), so the load row is informative only.

The machine may be shared: during every timed call the child records the CPU time that other processes and
the hypervisor (steal) took; a child contended above ``--max-contention`` is run again, and values still
contended are marked ``*``. The whole-run rows also save a decimated copy of the audio, and the driver prints
how far the two sides' songs are apart (fp32: ~1e-6, i.e. the same job).

Usage (from the repository root)::

    PYTHONPATH=. python bench/bench_vs_diffusers.py                       # everything, bf16 and fp32
    PYTHONPATH=. python bench/bench_vs_diffusers.py --rows dit_step,condition --dtypes bf16
    PYTHONPATH=. python bench/bench_vs_diffusers.py --smoke               # tiny geometry, checks the harness

Times are the best of the timed repetitions (after warm-up), in seconds, ``torch.set_num_threads`` =
``--threads``. The ratio is diffusers / ours: above 1 means ours is faster.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

ROWS = ("dit_step", "condition", "vae_decode", "pipeline")
DTYPES = ("bf16", "fp32")
DIT_DIR = "acestep-v15-turbo"
TEXT_DIR = "Qwen3-Embedding-0.6B"
DURATION = 30.0
SEED = 0
CAPTION = ("An energetic indie pop song with jangly electric guitars, driving bass, bright synth pads and a "
           "catchy female vocal, 120 bpm, summer festival feel")
LYRICS = """[verse]
Morning light on the station wall
Every train is a chance to call
I keep your letter folded twice
Counting colours, paying the price

[chorus]
Run, run, under the open sky
Hold on, we were born to fly
Sing it loud till the city wakes
Every heartbeat is all it takes

[verse]
Paper cups and a borrowed song
Neon signs where the nights are long
You said follow the northern star
I said darling, that's where you are

[chorus]
Run, run, under the open sky
Hold on, we were born to fly
Sing it loud till the city wakes
Every heartbeat is all it takes

[bridge]
And if the rain comes down tonight
We'll dance until the morning light

[outro]
Run, run, we were born to fly"""

# Real geometry of the 2B turbo DiT companions (the DiT itself: AceStepConfig() defaults).
QWEN3_FULL = {
    "architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151669, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False, "torch_dtype": "bfloat16",
}
VAE_FULL = {
    "_class_name": "AutoencoderOobleck", "audio_channels": 2, "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 128, "decoder_input_channels": 64, "downsampling_ratios": [2, 4, 4, 6, 10],
    "encoder_hidden_size": 128, "sampling_rate": 48000,
}
# --smoke: same code paths, tiny widths (checks the harness in a minute; numbers mean nothing).
SMOKE_DIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_lyric_encoder_hidden_layers=1,
                 num_timbre_encoder_hidden_layers=1, num_attention_pooler_hidden_layers=1, fsq_dim=64)
SMOKE_QWEN = dict(hidden_size=1024, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
SMOKE_VAE = dict(channel_multiples=[1, 2, 2, 2, 2], decoder_channels=8, encoder_hidden_size=8)

TEXT_TOKENS, LYRIC_TOKENS = 128, 512  # condition-row inputs; packed condition = 512 + 1 + 128 = 641 tokens


# ---------------------------------------------------------------------------------------------------- helpers


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


CONTENTION: dict[str, list[dict]] = {}  # per timed call: CPU taken by other processes / the hypervisor


def _system_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return user + nice + system + irq + softirq, steal


class _Meter:
    """Wall time of a block, plus how much of the machine others used meanwhile: ``foreign`` = CPU time of
    other processes, ``steal`` = time the hypervisor gave our vCPUs to other guests, both as a share of
    wall × logical CPUs. Above a few percent, the timing is contaminated."""

    tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.t0, self.own0, (self.busy0, self.steal0) = time.perf_counter(), _own_cpu(), _system_jiffies()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy, steal = _system_jiffies()
        capacity = self.wall * (os.cpu_count() or 1)
        own = _own_cpu() - self.own0
        self.foreign = max(0.0, ((busy - self.busy0) / self.tick - own) / capacity)
        self.steal = (steal - self.steal0) / self.tick / capacity
        return False


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _timed(fn, warmup: int, reps: int, keep: list | None = None, name: str = "") -> list[float]:
    """Wall times of ``reps`` calls after ``warmup`` untimed ones; the last result goes into ``keep``; the
    contention seen during each call goes into CONTENTION[name]."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        gc.collect()
        with _Meter() as m:
            result = fn()
        times.append(m.wall)
        CONTENTION.setdefault(name, []).append({"foreign": round(m.foreign, 3), "steal": round(m.steal, 3)})
        if keep is not None:
            keep[:] = [result]
        del result
    return times


@contextlib.contextmanager
def _skip_init():
    """Build modules without running torch.nn.init (their parameters are replaced by assignment right after);
    untouched ``torch.empty`` storage never becomes resident, so this costs neither time nor RSS."""
    import torch

    names = ["uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
             "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_"]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _config_json(smoke: bool) -> dict:
    from acestep_core.models.config import AceStepConfig

    cfg = dataclasses.asdict(AceStepConfig(**(SMOKE_DIT if smoke else {})))
    cfg.update(architectures=["AceStepConditionGenerationModel"], model_type="acestep", is_turbo=True,
               model_version="turbo", max_position_embeddings=32768, hidden_act="silu", vocab_size=64003)
    return cfg


# ---------------------------------------------------------------------------------------------------- weights


def write_weights(root: str, smoke: bool) -> dict:
    """Full-size random weights in the official HF layout: identical tensors for both implementations."""
    import torch
    from safetensors.torch import save_file

    from acestep_core.models.config import AceStepConfig
    from acestep_core.models.model import AceStepModel, to_checkpoint_keys
    from devtools.fixtures import _copy_tokenizer_files

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(1234)

    def fill(key: str, shape, out_dtype):
        name = key.rsplit(".", 1)[-1]
        if ("norm" in key and name == "weight") and len(shape) == 1:
            return torch.ones(shape, dtype=out_dtype)
        return torch.empty(shape).normal_(0.0, 0.02, generator=g).to(out_dtype)

    cfg_json = _config_json(smoke)
    dit_dir = os.path.join(root, DIT_DIR)
    os.makedirs(dit_dir, exist_ok=True)
    with open(os.path.join(dit_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    with torch.device("meta"):
        model = AceStepModel(AceStepConfig.from_json(cfg_json))
    shapes = {k: tuple(v.shape) for k, v in to_checkpoint_keys(model.state_dict()).items()}
    del model
    dit = {k: fill(k, s, torch.bfloat16) for k, s in shapes.items()}
    n_dit = sum(t.numel() for t in dit.values())
    save_file(dit, os.path.join(dit_dir, "model.safetensors"))
    del dit
    gc.collect()
    # silence_latent.pt as shipped: [1, 64, 15000]; a constant per channel (like real silence) plus a little noise.
    base = torch.randn(1, 64, 1, generator=g)
    silence = (base + 0.05 * torch.randn(1, 64, 15000, generator=g)).contiguous()
    torch.save(silence, os.path.join(dit_dir, "silence_latent.pt"))

    # VAE: diffusers format (weight_g / weight_v), fp32 as shipped; snake alpha/beta 0, unit-norm directions.
    from diffusers import AutoencoderOobleck

    vae_cfg = dict(VAE_FULL, **(SMOKE_VAE if smoke else {}))
    with torch.device("meta"):
        ref = AutoencoderOobleck(**{k: v for k, v in vae_cfg.items() if not k.startswith("_")})
    vae = {}
    for key, t in ref.state_dict().items():
        if key.endswith(("alpha", "beta")):
            vae[key] = torch.zeros(t.shape)
        elif key.endswith("weight_g"):
            vae[key] = torch.full(t.shape, 0.5)
        elif key.endswith("weight_v"):
            vae[key] = torch.randn(t.shape, generator=g)
        else:  # biases
            vae[key] = torch.empty(t.shape).normal_(0.0, 0.02, generator=g)
    n_vae = sum(t.numel() for t in vae.values())
    os.makedirs(os.path.join(root, "vae"), exist_ok=True)
    with open(os.path.join(root, "vae", "config.json"), "w") as f:
        json.dump(vae_cfg, f, indent=2)
    save_file(vae, os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"))
    del vae, ref

    # Text encoder: transformers Qwen3Model names, bf16.
    from transformers import Qwen3Config, Qwen3Model

    qcfg = dict(QWEN3_FULL, **(SMOKE_QWEN if smoke else {}))
    with torch.device("meta"):
        qm = Qwen3Model(Qwen3Config(**{k: v for k, v in qcfg.items()
                                       if k not in ("architectures", "model_type", "torch_dtype")}))
    qshapes = {k: tuple(v.shape) for k, v in qm.state_dict().items()}
    del qm
    qwen = {k: fill(k, s, torch.bfloat16) for k, s in qshapes.items()}
    n_qwen = sum(t.numel() for t in qwen.values())
    te = os.path.join(root, TEXT_DIR)
    os.makedirs(te, exist_ok=True)
    with open(os.path.join(te, "config.json"), "w") as f:
        json.dump(qcfg, f, indent=2)
    save_file(qwen, os.path.join(te, "model.safetensors"))
    _copy_tokenizer_files(te)
    del qwen
    return {"dit_params": n_dit, "vae_params": n_vae, "text_encoder_params": n_qwen,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- loaders


def _read(path: str, dtype, select=None) -> dict:
    from acestep_core.loading.weights import read_safetensors

    return read_safetensors(path, dtype, "cpu", select=select)


def _assign(module, state: dict, dtype):
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(dtype).eval().requires_grad_(False)


def load_diffusers_dit(root: str, dtype) -> dict:
    """transformer, condition_encoder, audio_tokenizer, audio_token_detokenizer from our DiT file, mapped to
    diffusers keys with the converter's renaming (devtools/diffusers_ref.py)."""
    import torch

    from devtools.diffusers_ref import diffusers_modules, split_for_diffusers

    with open(os.path.join(root, DIT_DIR, "config.json")) as f:
        c = json.load(f)
    with _skip_init():
        transformer, cond, tok, detok = diffusers_modules(c, is_turbo=True)
    parts = split_for_diffusers(_read(os.path.join(root, DIT_DIR, "model.safetensors"), dtype))
    silence = torch.load(os.path.join(root, DIT_DIR, "silence_latent.pt"), weights_only=True)
    parts["condition_encoder"]["silence_latent"] = silence.transpose(1, 2).to(dtype).contiguous()
    out = {}
    for name, key, module in (("transformer", "transformer", transformer),
                              ("condition_encoder", "condition_encoder", cond),
                              ("audio_tokenizer", "audio_tokenizer", tok),
                              ("audio_token_detokenizer", "detokenizer", detok)):
        out[name] = _assign(module, parts.pop(key), dtype)
    return out


def load_diffusers_vae(root: str, dtype):
    from diffusers import AutoencoderOobleck

    with open(os.path.join(root, "vae", "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    with _skip_init():
        vae = AutoencoderOobleck(**cfg)
    return _assign(vae, _read(os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"), dtype), dtype)


def load_diffusers_pipeline(root: str, dtype, vae_tiling: bool):
    from diffusers import AceStepPipeline as DiffusersPipeline
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    dit = load_diffusers_dit(root, dtype)
    vae = load_diffusers_vae(root, dtype)
    if vae_tiling:
        vae.enable_tiling()
    te = os.path.join(root, TEXT_DIR)
    with open(os.path.join(te, "config.json")) as f:
        qcfg = {k: v for k, v in json.load(f).items() if k not in ("architectures", "model_type", "torch_dtype")}
    config = Qwen3Config(**qcfg)
    config._attn_implementation = "sdpa"
    with _skip_init():
        text = Qwen3Model(config)
    text = _assign(text, _read(os.path.join(te, "model.safetensors"), dtype), dtype)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(te, "tokenizer.json"), pad_token="<|endoftext|>")
    return DiffusersPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, transformer=dit["transformer"],
                             condition_encoder=dit["condition_encoder"],
                             scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
                             audio_tokenizer=dit["audio_tokenizer"],
                             audio_token_detokenizer=dit["audio_token_detokenizer"])


# ---------------------------------------------------------------------------------------------------- children


def _inputs(cfg: dict, dtype):
    """The same random inputs for both sides (drawn in fp32, then cast)."""
    import torch

    g = torch.Generator().manual_seed(7)
    frames = int(DURATION * 25)
    d_enc = cfg.get("encoder_hidden_size") or cfg["hidden_size"]
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return {
        "x": r(1, frames, cfg["audio_acoustic_hidden_dim"]),
        "t": torch.tensor([0.625]).to(dtype),
        "context": r(1, frames, 2 * cfg["audio_acoustic_hidden_dim"]),
        "enc": r(1, LYRIC_TOKENS + 1 + TEXT_TOKENS, d_enc),
        "text": r(1, TEXT_TOKENS, cfg["text_hidden_dim"]),
        "text_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.bool),
        "lyrics": (0.02 * torch.randn(1, LYRIC_TOKENS, cfg["text_hidden_dim"], generator=g)).to(dtype),
        "lyric_mask": torch.ones(1, LYRIC_TOKENS, dtype=torch.bool),
        "refer": r(1, frames, cfg["timbre_hidden_dim"]),
        "order": torch.tensor([0]),
        "z": r(1, 64 if "vae" not in cfg else cfg["vae"]["decoder_input_channels"], frames),
    }


class _StageTimer:
    """Accumulates wall time per named module (forward hooks) or wrapped callable."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._start: dict[str, float] = {}

    def hook(self, name: str, module):
        def pre(*_):
            self._start[name] = time.perf_counter()

        def post(*_):
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._start.pop(name)
            self.calls[name] = self.calls.get(name, 0) + 1

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap(self, name: str, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
                self.calls[name] = self.calls.get(name, 0) + 1

        return inner


def run_child(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    dtype = _torch_dtype(job["dtype"])
    root, impl, row = job["root"], job["impl"], job["row"]
    with open(os.path.join(root, DIT_DIR, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(root, "vae", "config.json")) as f:
        cfg["vae"] = json.load(f)
    inp = _inputs(cfg, dtype)
    out: dict = {"times": {}, "extra": {}}
    t_load = time.perf_counter()

    if row in ("dit_step", "condition"):
        if impl == "ours":
            from acestep_core.loading.checkpoint import load_dit

            model = load_dit(os.path.join(root, DIT_DIR), dtype, "cpu").model
        else:
            mods = load_diffusers_dit(root, dtype)
        out["extra"]["load_s"] = time.perf_counter() - t_load
        out["extra"]["rss_after_load_mib"] = _current_rss_mib()
        with torch.inference_mode():
            if row == "dit_step" and impl == "ours":
                dec = model.decoder
                kv = dec.cross_kv(inp["enc"])
                out["times"]["cross_kv"] = _timed(lambda: dec.cross_kv(inp["enc"]), job["warmup"], job["reps"],
                                                   name="cross_kv")
                step = lambda: dec(inp["x"], inp["t"], inp["context"], kv)  # noqa: E731
                out["times"]["dit_step"] = _timed(step, job["warmup"], job["reps"], name="dit_step")
                v = step()
            elif row == "dit_step":
                tr = mods["transformer"]
                step = lambda: tr(hidden_states=inp["x"], timestep=inp["t"], timestep_r=inp["t"],  # noqa: E731
                                  encoder_hidden_states=inp["enc"], context_latents=inp["context"],
                                  return_dict=False)[0]
                out["times"]["dit_step"] = _timed(step, job["warmup"], job["reps"], name="dit_step")
                v = step()
            elif impl == "ours":
                enc = model.encoder
                call = lambda: enc(inp["text"], inp["text_mask"], inp["lyrics"], inp["lyric_mask"],  # noqa: E731
                                   inp["refer"], inp["order"])[0]
                out["times"]["condition"] = _timed(call, job["warmup"], job["reps"], name="condition")
                v = call()
            else:
                enc = mods["condition_encoder"]
                call = lambda: enc(text_hidden_states=inp["text"], text_attention_mask=inp["text_mask"],  # noqa: E731
                                   lyric_hidden_states=inp["lyrics"], lyric_attention_mask=inp["lyric_mask"],
                                   refer_audio_acoustic_hidden_states_packed=inp["refer"],
                                   refer_audio_order_mask=inp["order"])[0]
                out["times"]["condition"] = _timed(call, job["warmup"], job["reps"], name="condition")
                v = call()
        out["extra"]["output_shape"] = list(v.shape)
        out["extra"]["output_finite"] = bool(torch.isfinite(v).all())
        out["extra"]["output_abs_mean"] = float(v.float().abs().mean())

    elif row in ("vae_decode_tiled", "vae_decode_untiled"):
        tiled = row.endswith("_tiled")
        if impl == "ours":
            from acestep_core.loading.checkpoint import load_vae
            from acestep_core.models.vae import tiled_decode

            vae = load_vae(os.path.join(root, "vae"), dtype, "cpu")
            call = ((lambda z: tiled_decode(vae, z, chunk_size=512, overlap=64)) if tiled
                    else (lambda z: vae.decode(z)))
        else:
            vae = load_diffusers_vae(root, dtype)
            if tiled:
                vae.enable_tiling()  # tile_latent_min_length 512, tile_latent_overlap 64: same as ours
            call = lambda z: vae.decode(z).sample  # noqa: E731
        out["extra"]["load_s"] = time.perf_counter() - t_load
        out["extra"]["rss_after_load_mib"] = _current_rss_mib()
        z = inp["z"]
        with torch.inference_mode():
            for _ in range(job["warmup"]):  # a short decode: primes the conv kernels without 30 s of work
                call(z[:, :, :64])
            last: list = []
            out["times"][row] = _timed(lambda: call(z), 0, job["reps"], keep=last, name=row)
        out["extra"]["output_shape"] = list(last[0].shape)
        out["extra"]["output_finite"] = bool(torch.isfinite(last[0]).all())
        out["extra"]["output_abs_max"] = float(last[0].float().abs().max())

    elif row == "pipeline":
        timer = _StageTimer()
        if impl == "ours":
            from acestep_core.pipeline import AceStepPipeline
            from acestep_core.request import request

            pipe = AceStepPipeline.from_pretrained(root, dtype=job["dtype"], device="cpu")
            out["extra"]["load_s"] = time.perf_counter() - t_load
            out["extra"]["rss_after_load_mib"] = _current_rss_mib()
            timer.hook("text encoder", pipe.ckpt.text_encoder.model)
            timer.hook("condition encoder", pipe.model.encoder)
            timer.hook("DiT steps", pipe.model.decoder)
            pipe.model.decoder.cross_kv = timer.wrap("cross K/V", pipe.model.decoder.cross_kv)
            timer.hook("VAE decode", pipe.ckpt.vae.decoder)
            req = request(caption=CAPTION, lyrics=LYRICS, duration=DURATION, seed=SEED)
            call = lambda: pipe(req).audio  # noqa: E731
        else:
            pipe = load_diffusers_pipeline(root, dtype, job.get("diffusers_vae_tiling", False))
            pipe.set_progress_bar_config(disable=True)
            out["extra"]["load_s"] = time.perf_counter() - t_load
            out["extra"]["rss_after_load_mib"] = _current_rss_mib()
            timer.hook("text encoder", pipe.text_encoder)
            timer.hook("condition encoder", pipe.condition_encoder)
            timer.hook("DiT steps", pipe.transformer)
            timer.hook("VAE decode", pipe.vae.decoder)
            call = lambda: pipe(prompt=CAPTION, lyrics=LYRICS, audio_duration=DURATION,  # noqa: E731
                                num_inference_steps=8, shift=3.0, output_type="pt",
                                generator=torch.Generator().manual_seed(SEED)).audios
        last: list = []
        stages, calls = [], []

        def run():
            timer.totals.clear()
            timer.calls.clear()
            result = call()
            stages.append(dict(timer.totals))
            calls.append(dict(timer.calls))
            return result

        out["times"]["pipeline"] = _timed(run, 0, job["reps"], keep=last, name="pipeline")
        best = min(range(len(stages)), key=lambda i: out["times"]["pipeline"][i])
        timer.totals, timer.calls, audio = stages[best], calls[best], last[0]
        out["extra"]["stages_s"] = dict(timer.totals)
        out["extra"]["stage_calls"] = dict(timer.calls)
        out["extra"]["output_shape"] = list(audio.shape)
        out["extra"]["output_finite"] = bool(torch.isfinite(audio).all())
        # A decimated copy of the audio, so the driver can check both sides produced the same song.
        torch.save(audio[:, :, ::97].float().clone(), os.path.join(root, f"audio_{impl}_{job['dtype']}.pt"))
    else:
        raise ValueError(f"unknown row {row!r}")

    out["peak_rss_mib"] = _peak_rss_mib()
    out["contention"] = CONTENTION
    return out


# ---------------------------------------------------------------------------------------------------- driver


def _warm_page_cache(root: str) -> None:
    """Read every weight file once, so each child starts with the same (warm) page cache: bf16 weights are
    memory-mapped without a copy on both sides and would otherwise be faulted in from disk inside a timed call
    whenever a big fp32 child before it had pushed them out of the cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith((".safetensors", ".pt")):
                with open(os.path.join(folder, name), "rb", buffering=0) as f:
                    while f.read(64 << 20):
                        pass


def contention_of(result: dict) -> float:
    """The worst foreign + steal share over the repetitions that the table reports (the best of each key).
    Calls under half a second are skipped: /proc/stat counts in 10-ms ticks, too coarse for them."""
    worst = 0.0
    for key, times in result.get("times", {}).items():
        marks = result.get("contention", {}).get(key, [])
        if times and len(marks) == len(times) and min(times) >= 0.5:
            m = marks[min(range(len(times)), key=times.__getitem__)]
            worst = max(worst, m["foreign"] + m["steal"])
    return worst


def _spawn(job: dict, log) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(job["threads"]))
    env.setdefault("MKL_NUM_THREADS", str(job["threads"]))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("ACESTEP_CACHE_DIR", os.path.join(job["root"], "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if proc.returncode != 0 or result is None:
        msg = (proc.stderr or proc.stdout)[-3000:]
        log(f"  !! {job['impl']} {job['row']} {job['dtype']} failed (rc {proc.returncode}):\n{msg}")
        return {"error": msg.strip().splitlines()[-1] if msg.strip() else f"rc {proc.returncode}", "wall_s": wall}
    result["wall_s"] = wall
    return result


def _machine() -> dict:
    import torch

    cpu, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import diffusers
    import transformers

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "ram_gib": round(mem_gib, 1),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cuda_available": torch.cuda.is_available()}


def _git_info() -> str:
    """Commit and whether acestep_core/ differs from it (read-only git calls)."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", "acestep_core")
    state = "acestep_core clean" if dirty is not None and not dirty.stdout.strip() else "acestep_core modified"
    return f"commit {head.stdout.strip()} ({state})"


def _fmt_s(v) -> str:
    return "—" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _fmt_mib(v) -> str:
    return "—" if v is None else f"{v / 1024:.2f} GiB"


def build_table(results: dict, max_contention: float = 0.10) -> tuple[str, str]:
    """(main table, pipeline stage table) in markdown, from {(row, impl, dtype): child result}."""
    def best(row, impl, dtype, key=None):
        r = results.get(f"{row}|{impl}|{dtype}")
        if not r or "error" in r:
            return None
        t = r["times"].get(key or row)
        return min(t) if t else None

    def contended(row, impl, dtype):
        r = results.get(f"{row}|{impl}|{dtype}")
        return bool(r) and "error" not in r and contention_of(r) > max_contention

    def rss(row, impl, dtype):
        r = results.get(f"{row}|{impl}|{dtype}")
        return None if not r or "error" in r else r.get("peak_rss_mib")

    lines = ["| row | dtype | ours (s) | diffusers (s) | ratio (diffusers/ours) | ours peak RSS | diffusers peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|"]
    dtypes = sorted({k.split("|")[2] for k in results}, key=lambda d: DTYPES.index(d))

    def add(label, dtype, ours, theirs, ours_rss, theirs_rss, row=None):
        ratio = f"{theirs / ours:.2f}×" if ours and theirs else "—"
        mo = "*" if row and contended(row, "ours", dtype) else ""
        md = "*" if row and contended(row, "diffusers", dtype) else ""
        lines.append(f"| {label} | {dtype} | {_fmt_s(ours)}{mo} | {_fmt_s(theirs)}{md} | {ratio} | "
                     f"{_fmt_mib(ours_rss)} | {_fmt_mib(theirs_rss)} |")

    for dtype in dtypes:
        if f"dit_step|ours|{dtype}" in results or f"dit_step|diffusers|{dtype}" in results:
            step, kv = best("dit_step", "ours", dtype), best("dit_step", "ours", dtype, "cross_kv")
            theirs = best("dit_step", "diffusers", dtype)
            r_o, r_d = rss("dit_step", "ours", dtype), rss("dit_step", "diffusers", dtype)
            add("DiT step (ours: cross K/V reused)", dtype, step, theirs, r_o, r_d, "dit_step")
            add("DiT step + cross K/V (one call, like for like)", dtype,
                step + kv if step is not None and kv is not None else None, theirs, r_o, r_d, "dit_step")
            lines.append(f"| cross K/V projection (ours, once per generation) | {dtype} | {_fmt_s(kv)} | "
                         f"inside every step | — | | |")
        if f"condition|ours|{dtype}" in results or f"condition|diffusers|{dtype}" in results:
            add("condition encoding", dtype, best("condition", "ours", dtype), best("condition", "diffusers", dtype),
                rss("condition", "ours", dtype), rss("condition", "diffusers", dtype), "condition")
        for row, label in (("vae_decode_tiled", "VAE decode 30 s, tiled 512/64"),
                           ("vae_decode_untiled", "VAE decode 30 s, untiled")):
            if f"{row}|ours|{dtype}" in results or f"{row}|diffusers|{dtype}" in results:
                add(label, dtype, best(row, "ours", dtype), best(row, "diffusers", dtype),
                    rss(row, "ours", dtype), rss(row, "diffusers", dtype), row)
        if f"pipeline|ours|{dtype}" in results or f"pipeline|diffusers|{dtype}" in results:
            add("text2music 30 s, turbo 8 steps (whole call)", dtype, best("pipeline", "ours", dtype),
                best("pipeline", "diffusers", dtype), rss("pipeline", "ours", dtype),
                rss("pipeline", "diffusers", dtype), "pipeline")
            lo = results.get(f"pipeline|ours|{dtype}", {}).get("extra", {}).get("load_s")
            ld = results.get(f"pipeline|diffusers|{dtype}", {}).get("extra", {}).get("load_s")
            add("load all weights (informative, see notes)", dtype, lo, ld, None, None)

    stage_lines = []
    for dtype in dtypes:
        so = results.get(f"pipeline|ours|{dtype}", {}).get("extra", {}).get("stages_s")
        sd = results.get(f"pipeline|diffusers|{dtype}", {}).get("extra", {}).get("stages_s")
        if not so and not sd:
            continue
        if not stage_lines:
            stage_lines = ["| stage of the 30-s run | dtype | ours (s) | diffusers (s) | share of ours |",
                           "|---|---|---:|---:|---:|"]
        total_o, total_d = best("pipeline", "ours", dtype), best("pipeline", "diffusers", dtype)
        names = ["text encoder", "condition encoder", "cross K/V", "DiT steps", "VAE decode"]
        so, sd = so or {}, sd or {}
        for name in names:
            if name not in so and name not in sd:
                continue
            o, d = so.get(name), sd.get(name)
            d_label = "inside DiT steps" if name == "cross K/V" else _fmt_s(d)
            share = f"{100 * o / total_o:.0f}%" if o is not None and total_o else "—"
            stage_lines.append(f"| {name} | {dtype} | {_fmt_s(o)} | {d_label} | {share} |")
        if total_o is not None:
            rest_o = total_o - sum(so.values())
            rest_d = total_d - sum(sd.values()) if total_d is not None else None
            stage_lines.append(f"| everything else (tokenizer, latents, scheduler, post-processing) | {dtype} | "
                               f"{_fmt_s(rest_o)} | {_fmt_s(rest_d)} | {100 * rest_o / total_o:.0f}% |")
    return "\n".join(lines), "\n".join(stage_lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)} (default all)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma list of bf16, fp32 (default both)")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions of the DiT-step and condition rows")
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls before timing (VAE: a 64-frame decode)")
    p.add_argument("--vae-reps", type=int, default=2, help="timed repetitions of each VAE decode")
    p.add_argument("--pipeline-reps", type=int, default=1, help="timed repetitions of the whole run")
    p.add_argument("--vae-modes", default="tiled,untiled", help="VAE decode variants: tiled, untiled")
    p.add_argument("--diffusers-vae-tiling", action="store_true",
                   help="enable VAE tiling in the diffusers pipeline row (its pipeline does not by default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-contention", type=float, default=0.10,
                   help="share of the machine other processes / the hypervisor may take during a reported call "
                        "before the child is run again (default 0.10); values above it are marked * in the table")
    p.add_argument("--retries", type=int, default=1, help="re-runs of a contended child (default 1)")
    p.add_argument("--workdir", help="where the random weights go (kept); default: a new temp dir, deleted at the end")
    p.add_argument("--keep-weights", action="store_true", help="do not delete the temp dir")
    p.add_argument("--reuse-weights", action="store_true", help="use the weights already in --workdir")
    p.add_argument("--json", help="also write every measurement (all repetitions, stages, RSS) to this file")
    p.add_argument("--smoke", action="store_true", help="tiny geometry: checks the harness, numbers mean nothing")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        job = json.loads(args.child)
        if job["row"] == "write":
            res = write_weights(job["root"], job["smoke"])
        else:
            res = run_child(job)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for r in rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}; choose from {', '.join(ROWS)}")
    for d in dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    vae_modes = [m.strip() for m in args.vae_modes.split(",") if m.strip()]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run still deletes its temp folder
    t_start = time.perf_counter()
    machine = _machine()
    machine["git"] = _git_info()
    log(f"machine: {machine}")
    made_tmp = args.workdir is None
    root = args.workdir or tempfile.mkdtemp(prefix="acestep_bench_")
    os.makedirs(root, exist_ok=True)
    results: dict = {}
    base = {"root": root, "threads": args.threads}
    try:
        if not (args.reuse_weights and os.path.isfile(os.path.join(root, DIT_DIR, "model.safetensors"))):
            log(f"writing random weights to {root} ...")
            info = _spawn({**base, "impl": "-", "row": "write", "dtype": "-", "smoke": args.smoke}, log)
            if "error" in info:
                return 1
            log(f"  done in {info['seconds']:.0f} s: DiT checkpoint {info['dit_params'] / 1e9:.2f} B params, "
                f"VAE {info['vae_params'] / 1e6:.0f} M, text encoder {info['text_encoder_params'] / 1e6:.0f} M")
            machine["weights"] = info
        plan = []
        for dtype in dtypes:
            for row in rows:
                if row == "vae_decode":
                    for mode in vae_modes:
                        plan.append((f"vae_decode_{mode}", dtype, dict(warmup=args.warmup, reps=args.vae_reps)))
                elif row == "pipeline":
                    plan.append((row, dtype, dict(warmup=0, reps=args.pipeline_reps,
                                                  diffusers_vae_tiling=args.diffusers_vae_tiling)))
                else:
                    plan.append((row, dtype, dict(warmup=args.warmup, reps=args.reps)))
        for row, dtype, extra in plan:
            order = ("ours", "diffusers") if len(results) % 4 == 0 else ("diffusers", "ours")
            for impl in order:  # alternate who goes first, so slow drift of the machine does not favour one side
                _warm_page_cache(root)
                log(f"[{time.perf_counter() - t_start:6.0f} s] {row} {dtype} {impl} ...")
                res = _spawn({**base, **extra, "impl": impl, "row": row, "dtype": dtype}, log)
                for attempt in range(args.retries):
                    if "error" in res or contention_of(res) <= args.max_contention:
                        break
                    log(f"    other processes took {100 * contention_of(res):.0f}% of the machine during the "
                        f"best timed call; running this child again")
                    _warm_page_cache(root)
                    again = _spawn({**base, **extra, "impl": impl, "row": row, "dtype": dtype}, log)
                    if "error" not in again and contention_of(again) < contention_of(res):
                        res = again
                results[f"{row}|{impl}|{dtype}"] = res
                if "error" not in res:
                    times = ", ".join(f"{k}: " + " ".join(f"{t:.3f}" for t in v) for k, v in res["times"].items())
                    log(f"    {times} s; peak RSS {res['peak_rss_mib'] / 1024:.2f} GiB; child wall "
                        f"{res['wall_s']:.0f} s; contention {100 * contention_of(res):.0f}%; {res.get('extra', {})}")
    except BaseException:
        if made_tmp and not args.keep_weights:  # a --workdir given by the caller is never deleted
            shutil.rmtree(root, ignore_errors=True)
        raise

    agreement = []
    for dtype in dtypes:
        a, b = (os.path.join(root, f"audio_{impl}_{dtype}.pt") for impl in ("ours", "diffusers"))
        if os.path.isfile(a) and os.path.isfile(b):
            import torch

            x, y = torch.load(a), torch.load(b)
            if x.shape == y.shape:
                rel = float((x - y).abs().max() / y.abs().max().clamp(min=1e-12))
                agreement.append(f"{dtype}: max |ours − diffusers| / max |diffusers| = {rel:.2e} "
                                 f"(decimated 30-s audio, {x.shape[-1]} samples per channel)")
            else:
                agreement.append(f"{dtype}: output shapes differ: {list(x.shape)} vs {list(y.shape)}")
    if made_tmp and not args.keep_weights:
        shutil.rmtree(root, ignore_errors=True)
    table, stages = build_table(results, args.max_contention)
    total = time.perf_counter() - t_start
    print(f"\nMachine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['ram_gib']} GiB RAM, "
          f"avx512_bf16={machine['avx512_bf16']}, amx_bf16={machine['amx_bf16']}, "
          f"CUDA={machine['cuda_available']}; torch {machine['torch']}, diffusers {machine['diffusers']}, "
          f"transformers {machine['transformers']}; {args.threads} threads"
          + ("; SMOKE geometry (numbers mean nothing)" if args.smoke else ""))
    print(f"Code: {machine['git']}")
    print(f"Best of the timed repetitions (DiT step / condition: {args.warmup} warm-up + {args.reps}; VAE: "
          f"64-frame warm-up + {args.vae_reps}; pipeline: {args.pipeline_reps} run, no warm-up). "
          f"Total bench wall time {total / 60:.1f} min.\n")
    print(table)
    marked = sorted({k for k, r in results.items() if "error" not in r and contention_of(r) > args.max_contention})
    print("\nContention (share of the machine taken by other processes + hypervisor steal during the reported "
          "call): " + ", ".join(f"{k.replace('|', ' ')} {100 * contention_of(r):.0f}%" for k, r in results.items()
                                 if "error" not in r))
    if marked:
        print(f"* = above {100 * args.max_contention:.0f}% even after {args.retries} re-run(s): treat as noisy.")
    if agreement:
        print("\nSame job on both sides (whole-run outputs): " + "; ".join(agreement))
    if stages:
        print("\nWhere the 30-s run goes (forward hooks, same run as above):\n")
        print(stages)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results, "total_s": total}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
