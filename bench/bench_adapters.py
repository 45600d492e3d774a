#!/usr/bin/env python
"""Times the adapter core on a full-size model: reading an adapter file, binding it to the model, patching
the weights (``patched`` enter) and restoring them (exit), and the memory the patch takes.

Adapters (random values, the official trainer's shapes, written to a temporary folder):
  lora   PEFT folder, r = 8, alpha = 16, q/k/v/o of every self- and cross-attention of the DiT
  lokr   lokr_weights.safetensors with the trainer's LoKr defaults (linear_dim 64, alpha 128, factor -1) on
         every Linear and the patch Conv1d of the DiT, as create_lycoris wraps them

The model is the 2B turbo geometry (``--xl``: the XL DiT) with random weights in ``--dtype``, built without
an initialiser pass. RSS is read from /proc before and inside the patched block; the growth is the patched
weights' copies (the originals are kept, not copied).

    PYTHONPATH=. python bench/bench_adapters.py                 # 2B, bf16, both adapters
    PYTHONPATH=. python bench/bench_adapters.py --smoke         # tiny geometry: checks the script
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from acestep_core.adapters import load_adapter, patched, weight_deltas  # noqa: E402
from acestep_core.constants import XL_DIT_GEOMETRY  # noqa: E402
from acestep_core.models.config import AceStepConfig  # noqa: E402
from acestep_core.models.model import AceStepModel  # noqa: E402
from devtools import lora_fixtures as lf  # noqa: E402

XL = XL_DIT_GEOMETRY
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, num_lyric_encoder_hidden_layers=1,
             num_timbre_encoder_hidden_layers=1, num_attention_pooler_hidden_layers=1, fsq_dim=64)


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def random_model(cfg: AceStepConfig, dtype: torch.dtype) -> AceStepModel:
    with torch.device("meta"):
        model = AceStepModel(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02))
    return model.eval().requires_grad_(False)


def run(name: str, path: str, model: AceStepModel) -> None:
    t0 = time.perf_counter()
    adapter = load_adapter(path)
    t1 = time.perf_counter()
    deltas = weight_deltas(model, [(adapter, 0.8)])
    t2 = time.perf_counter()
    sample = next(iter(deltas))
    before, ptr = model.get_parameter(sample).detach().clone(), model.get_parameter(sample).data_ptr()
    rss0 = rss_gib()
    numel = sum(model.get_parameter(n).numel() for n in deltas)
    element = model.get_parameter(sample).element_size()
    with patched(model, deltas):
        t3 = time.perf_counter()
        rss1 = rss_gib()
    t4 = time.perf_counter()
    restored = torch.equal(model.get_parameter(sample), before) and model.get_parameter(sample).data_ptr() == ptr
    print(f"| {name} | {len(adapter.targets)} | {numel / 1e6:.0f} M ({numel * element / 2**30:.2f} GiB) | "
          f"{t1 - t0:.2f} | {t2 - t1:.3f} | {t3 - t2:.2f} | {t4 - t3:.3f} | {rss1 - rss0:+.2f} | "
          f"{numel * 4 / 2**30:.2f} | {restored} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xl", action="store_true")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--adapters", default="lora,lokr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg = AceStepConfig(**(SMOKE if args.smoke else XL if args.xl else {}))
    config_json = {**dataclasses.asdict(cfg), "encoder_hidden_size": cfg.encoder_hidden_size}
    t = time.perf_counter()
    model = random_model(cfg, dtype)
    print(f"model: {'smoke' if args.smoke else 'XL' if args.xl else '2B'} {args.dtype}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, built in "
          f"{time.perf_counter() - t:.0f} s, RSS {rss_gib():.1f} GiB, {args.threads} threads\n")
    print("| adapter | weights | patched size | load s | bind s | patch s | restore s | RSS growth GiB | "
          "dense fp32 deltas GiB | restored |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.adapters.split(","):
            if name == "lora":
                shapes = lf.module_shapes(config_json)
                path = lf.write_peft(os.path.join(tmp, "lora"), lf.lora_factors(shapes, 8), r=8, alpha=16,
                                     dtype=torch.bfloat16)
            else:
                path = lf.write_lokr(os.path.join(tmp, "lokr", "lokr_weights.safetensors"),
                                     lf.module_shapes(config_json, names=None, conv=True), dtype=torch.bfloat16)
            run(name, path, model)


if __name__ == "__main__":
    main()
