"""The planner's fast paths give the same tokens as the plain ones: the CPU sort, one decode thread for a small LM,
the fixed-length codes loop; plus its speed report (tokens/s)."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

from acestep_core.lm_planner.sampling import sample, sort_descending


def _cases():
    g = torch.Generator().manual_seed(0)
    yield "random", torch.randn(3, 64000, generator=g)
    yield "bf16 ties", torch.randn(3, 64000, generator=g).bfloat16().float()
    masked = torch.randn(2, 5000, generator=g)
    masked[:, ::3] = float("-inf")
    yield "masked", masked
    small = torch.randint(-3, 3, (2, 1000), generator=g).float()
    small[0, 5], small[0, 6] = -0.0, 0.0
    yield "integers and signed zeros", small
    yield "denormals", torch.randn(2, 3000, generator=g) * 1e-40
    yield "all masked but one", torch.full((1, 100), float("-inf")).index_fill_(1, torch.tensor([7]), 1.0)


@pytest.mark.parametrize("name,logits", list(_cases()), ids=[c[0] for c in _cases()])
def test_cpu_sort_is_torchs_stable_descending_sort(name, logits):
    values, order = sort_descending(logits)
    expected_values, expected_order = logits.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(order, expected_order)
    assert torch.equal(values, expected_values)


def test_sampling_with_the_cpu_sort_draws_what_torchs_sort_draws(monkeypatch):
    from acestep_core.lm_planner import sampling

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 4000, generator=g).bfloat16().float()  # ties, as bf16 logits have
    uniforms = torch.rand(64, generator=g)
    settings = [(0.85, 0, 0.9, 0.0), (1.0, 50, 1.0, 0.0), (0.7, 0, 1.0, 0.05), (1.2, 20, 0.8, 0.1)]
    fast = [sample(logits, uniforms, *s) for s in settings]
    monkeypatch.setattr(sampling, "sort_descending",
                        lambda x: x.sort(dim=-1, descending=True, stable=True))
    plain = [sample(logits, uniforms, *s) for s in settings]
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    from acestep_core.loading.lm import load_lm, load_lm_tokenizer
    from acestep_core.lm_planner import Planner
    from devtools.lm_fixtures import LM_VOCAB, random_lm_state_dict, write_comfy_lm

    path = write_comfy_lm(str(tmp_path_factory.mktemp("models")), random_lm_state_dict(seed=11))
    return Planner(load_lm(path, dtype=torch.float32), load_lm_tokenizer(None, LM_VOCAB), max_duration=12)


def test_a_small_lm_decodes_on_one_thread_and_gives_the_same_plan(planner, monkeypatch):
    torch.set_num_threads(2)
    seen = set()

    def on_token(phase, done, total):
        seen.add(torch.get_num_threads())

    one_thread = planner.plan("rock", "[verse]\nla", seed=3, mode="codes", metas={"duration": 6}, on_token=on_token)
    assert seen == {1} and torch.get_num_threads() == 2  # restored afterwards
    monkeypatch.setattr(planner, "step_bytes", 2**40)  # as a large LM: the caller's threads
    seen.clear()
    two_threads = planner.plan("rock", "[verse]\nla", seed=3, mode="codes", metas={"duration": 6}, on_token=on_token)
    assert seen == {2}
    assert one_thread.codes == two_threads.codes and len(one_thread.codes) == 30


def test_a_failed_cuda_graph_capture_warns_and_runs_eagerly(planner, monkeypatch):
    from acestep_core.models import lm as lm_module

    def no_capture(*args, **kwargs):
        raise RuntimeError("no CUDA graphs here")

    monkeypatch.setattr(lm_module, "_DecodeGraph", no_capture)
    lm = planner.lm
    with torch.inference_mode():
        lm.setup_cache(2, 300)
        lm.prefill(torch.tensor([[1, 2, 3]]), 0, rows=slice(0, 1))
        lm.copy_cache_row(0, slice(1, 2))
        tokens = torch.tensor([[151700], [151701]])
        eager = lm.prefill(tokens, 3, planner.code_rows)
        lm.enable_cuda_graph()
        with pytest.warns(UserWarning, match="CUDA graph capture of the LM decode step failed"):
            graphed = lm._decode_graphed(tokens, 3, planner.code_rows, None)
        lm.release_cache()
    assert torch.equal(graphed, eager) and lm.cuda_graphs is None
    # On the CPU the planner never tries: its plan is the same with graphs enabled.
    lm.enable_cuda_graph()
    assert planner.plan("pop", "", seed=4, mode="codes", metas={"duration": 4}).codes == \
        planner.plan("pop", "", seed=4, mode="codes", metas={"duration": 4}).codes
    lm.disable_cuda_graph()


def test_int8_weights_keep_greedy_plans_of_the_terse_lm(tmp_path):
    """Int8 weight-only layers and head (models/lm_int8.py): on the terse LM (clear logit margins) the greedy
    thinking equals the bf16 model's; on a random LM the code logits stay within 10 % of their spread."""
    from acestep_core.loading.lm import load_planner
    from acestep_core.models.lm_int8 import Int8Linear, quantize_lm_int8
    from devtools.lm_fixtures import random_lm_state_dict, terse_lm_state_dict, write_comfy_lm

    path = write_comfy_lm(str(tmp_path / "terse"), terse_lm_state_dict(seed=5))
    plain, int8 = load_planner(path, torch.bfloat16), load_planner(path, torch.bfloat16)
    quantize_lm_int8(int8.lm, int8.code_rows)
    assert isinstance(int8.lm.layers[0].mlp.down_proj, Int8Linear)
    assert int8.lm.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    plans = [p.plan("pop", "[verse]\nla", seed=1, temperature=0.0, metas={"duration": 20}) for p in (plain, int8)]
    assert plans[0].metas_text == plans[1].metas_text and plans[0].cot == plans[1].cot
    assert len(plans[1].codes) == 100
    path = write_comfy_lm(str(tmp_path / "random"), random_lm_state_dict(seed=11))
    plain, int8 = load_planner(path, torch.bfloat16), load_planner(path, torch.bfloat16)
    quantize_lm_int8(int8.lm, int8.code_rows)
    with torch.inference_mode():
        logits = []
        for p in (plain, int8):
            p.lm.setup_cache(1, 64)
            logits.append(p.lm.prefill(torch.tensor([[1, 2, 3, 151700]]), 0, p.code_rows).float())
            p.lm.release_cache()
    assert 0 < (logits[1] - logits[0]).abs().max() < 0.1 * logits[0].std()


def test_cli_lm_int8_plans_and_shows_tokens_per_second(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """``--lm-int8``: the CLI loads the LM with int8 layers, plans (greedy: the same metas as without it) and its
    progress line ends with the codes' tokens/s; on a GPU the flag is refused before anything loads."""
    import json

    from acestep_core import cli
    from acestep_core.audio import read_metadata
    from acestep_core.models.lm_int8 import Int8Linear
    from devtools.fixtures import tiny_models_folder
    from devtools.lm_fixtures import terse_lm_state_dict, write_official_lm

    root = tiny_models_folder(tmp_path_factory)
    write_official_lm(root, terse_lm_state_dict(seed=5), name="acestep-5Hz-lm-1.7B")
    loaded = []
    original = cli.load_lm

    def spy(pipe, path, int8=False):
        original(pipe, path, int8)
        loaded.append(pipe.planner.lm.layers[0].mlp.up_proj)

    monkeypatch.setattr(cli, "load_lm", spy)
    plans = []
    for extra in ([], ["--lm-int8"]):
        out = tmp_path / f"song{len(plans)}.flac"
        code = cli.main(["generate", "--checkpoint", root, "--caption", "pop", "--seed", "3", "--out", str(out),
                         "--device", "cpu", "--dtype", "fp32", "--lm-temperature", "0", *extra])
        err = capsys.readouterr().err
        assert code == 0, err
        plans.append(json.loads(read_metadata(str(out))["acestep"])["lm"])
    assert isinstance(loaded[1], Int8Linear) and not isinstance(loaded[0], Int8Linear)
    assert plans[0]["bpm"] == plans[1]["bpm"] == 111 and plans[0]["keyscale"] == plans[1]["keyscale"]
    assert re.search(r"LM codes \[#+\] 55/55 +[\d.]+s \d+ tokens/s", err), err
    with pytest.raises(cli.UsageError, match="--lm-int8: the int8 LM runs on the CPU only"):
        cli._check_lm_int8(argparse.Namespace(lm_int8=True), torch.device("cuda"))  # checked before loading
