#!/usr/bin/env python
"""fp8 error at full size on any machine: the 2B (or ``--xl``) DiT decoder with random weights in bf16 against the
same weights with fp8 decoder Linears (e4m3fn, e5m2), same inputs and seed.

* velocity: one decoder forward (random latents, context and condition, t = 0.6);
* final latents: an 8-step turbo Euler loop (shift 3, the distilled schedule) from the same noise, cross-attention
  K/V computed once as the pipeline does.

Relative L2 errors are printed and written to ``--json``. On a CPU use few frames (default 128, the minimum the
pipeline generates); ``bench/bench_lowvram.py`` measures the same on a GPU with the whole pipeline.

    PYTHONPATH=. python bench/fp8_error.py                 # 2B, 128 frames
    PYTHONPATH=. python bench/fp8_error.py --xl --frames 256
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from acestep_core.memory.fp8 import FP8_FORMATS, quantize_linears  # noqa: E402
from acestep_core.models.config import AceStepConfig  # noqa: E402
from acestep_core.models.dit import DiT  # noqa: E402
from acestep_core.sampling import turbo_schedule  # noqa: E402
from bench.bench_lowvram import XL, build  # noqa: E402


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--xl", action="store_true")
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = AceStepConfig(**XL) if args.xl else AceStepConfig()
    t0 = time.perf_counter()
    decoder = build(lambda: DiT(config), device, torch.bfloat16, 1)
    g = torch.Generator(device="cpu").manual_seed(0)
    bf = torch.bfloat16
    noise = torch.randn(1, args.frames, 64, generator=g).to(device, bf)
    context = torch.randn(1, args.frames, config.in_channels - 64, generator=g).to(device, bf)
    enc = torch.randn(1, 600, config.encoder_hidden_size or config.hidden_size, generator=g).to(device, bf)
    steps = list(turbo_schedule(3.0, None, torch.float64, steps=args.steps)) + [0.0]

    def run(model):
        kv = model.cross_kv(enc)
        velocity = model(noise, torch.tensor([0.6], device=device, dtype=bf), context, kv).float()
        x = noise
        for t, t_next in zip(steps[:-1], steps[1:]):
            v = model(x, torch.tensor([t], device=device, dtype=bf), context, kv)
            x = (x.float() + (t_next - t) * v.float()).to(bf)
        return velocity, x.float()

    v_ref, x_ref = run(decoder)
    rows = {"device": str(device), "geometry": "XL" if args.xl else "2B", "frames": args.frames,
            "steps": args.steps}
    for weight_dtype in ("fp8_e4m3fn", "fp8_e5m2"):
        model = build(lambda: DiT(config), device, torch.bfloat16, 1)  # the same random weights (seeded)
        quantize_linears(model, FP8_FORMATS[weight_dtype])
        v, x = run(model)
        rows[weight_dtype] = {"velocity_rel_l2": float((v - v_ref).norm() / v_ref.norm()),
                              "latents_rel_l2": float((x - x_ref).norm() / x_ref.norm())}
        print(weight_dtype, rows[weight_dtype], flush=True)
        del model
    rows["seconds"] = time.perf_counter() - t0
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
