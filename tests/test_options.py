"""The option table (acestep_core/options.py) is the one definition of every user setting: the request's
dataclasses, the node widgets, the command line's flags and the README's option lists must all agree with it."""
from __future__ import annotations

import argparse
import dataclasses
import os

import pytest
import torch

from acestep_core import cli, options
from acestep_core.errors import InputError
from acestep_core.request import FlowEdit, PlanSettings, RenderSettings, SamplerSettings, SongText, Task, request

P = "AceStep15_"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATACLASSES = {"text": SongText, "sampler": SamplerSettings, "render": RenderSettings, "lm": PlanSettings, "task": Task,
               "flow_edit": FlowEdit}
NODES = {"text": ["TextEncode"], "sampler": ["Sampler"], "render": ["VAEDecode"], "lm": ["LMPlanner"], "flow_edit": ["CoverLatent"],
         "task": ["EmptyLatent", "CoverLatent", "RepaintLatent", "ExtendLatent", "StemLatent"]}
# Widgets a node defines itself, not from the table, and why.
NODE_OWN = {
    (P + "LMPlanner", "mode"): "the Planner exists to run the LM: think by default, listed think/codes/off",
    (P + "LMPlanner", "decide_duration"): "in view and off: the latent already sets the length; on = the LM may "
                                          "replace it",
    (P + "EmptyLatent", "duration"): "a new song needs a length: the request's fallback (120 s) shown as a number",
    (P + "RepaintLatent", "start"): "a repaint window starts inside the song: 0 (the start) by default",
    (P + "RepaintLatent", "end"): "-1 = the end of the song (the Extend node makes its window from direction, "
                                  "seconds and overlap)",
}
# Options no node shows as one widget, and where the nodes take them from instead.
NOT_A_WIDGET = {
    ("task", "tracks"): "the Stems node's track and more_tracks",
}
ALL = [(part, o) for part, table in options.TABLES.items() for o in table]
IDS = [f"{part}.{o.name}" for part, o in ALL]


def _extra(part: str) -> dict:
    """Request fields an option of this part needs to be looked at (flow edit is only read when switched on)."""
    if part == "flow_edit":
        return {"flow_edit": True, "task": "cover", "src_audio": torch.rand(2, 48000) - 0.5, "src_sample_rate": 48000}
    return {}


def _with_source(task: str) -> dict:
    return {"task": task, "src_audio": torch.rand(2, 48000 * 12) - 0.5, "src_sample_rate": 48000}


@pytest.mark.parametrize(("part", "opt"), ALL, ids=IDS)
def test_the_request_takes_its_defaults_and_limits_from_the_table(part, opt):
    fields = {f.name: f for f in dataclasses.fields(DATACLASSES[part])}
    assert fields[opt.name].default == opt.default
    if opt.kind in ("int", "float") and opt.lo is not None:
        for edge in (opt.lo, opt.hi):
            request(**_extra(part), **{opt.key: edge})
        for outside in (opt.lo - 1, opt.hi + 1):
            with pytest.raises(InputError) as e:
                request(**_extra(part), **{opt.key: outside})
            assert e.value.name == opt.label and cli.FLAGS[e.value.name] == opt.flag
    elif opt.kind == "choice":
        for choice in opt.choices:
            request(**_extra(part), **{opt.key: choice})
        with pytest.raises(InputError) as e:
            request(**_extra(part), **{opt.key: "bogus"})
        assert e.value.name == opt.label
        assert str(opt.choices[0]) in e.value.allowed or opt.check  # an own check words what it allows
    elif opt.kind == "fields":  # some of the choices: each alone, all, and a name outside them refused
        extra = _with_source("complete") if opt.key == "tracks" else {}
        for chosen in [[c] for c in opt.choices] + [list(opt.choices)]:
            got = getattr(request(**extra, **{opt.key: chosen}), "task" if part == "task" else part)
            assert set(getattr(got, opt.name)) == set(chosen)
        with pytest.raises(InputError) as e:
            request(**extra, **{opt.key: [opt.choices[0], "bogus"]})
        assert e.value.name == opt.label and cli.FLAGS[e.value.name] == opt.flag


def test_the_table_holds_every_field_of_each_settings_part():
    for part, cls in DATACLASSES.items():
        fields = [f.name for f in dataclasses.fields(cls)]
        table = [o.name for o in options.TABLES[part]]
        if part == "task":  # the task's kind, its inputs and the window object are not settings
            assert set(fields) - set(table) == {"kind", "source", "audio_codes", "window", "flow_edit"}
        elif part == "text":  # the timbre reference is an input (audio), not a setting
            assert fields == table + ["timbre"]
        else:
            assert fields == table, part


@pytest.mark.parametrize(("part", "opt"), ALL, ids=IDS)
def test_the_command_line_flag_comes_from_the_table(part, opt, tmp_path, monkeypatch, capsys):
    generate = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {flag: a for a in generate.choices["generate"]._actions for flag in a.option_strings}
    action = actions[opt.flag]
    assert cli.FLAGS[opt.key] == cli.FLAGS[opt.label] == opt.flag
    assert action.default in (None, False)  # not given = the request's default
    assert action.help and (opt.help in action.help or opt.help.rstrip(".") in action.help)
    if opt.kind == "bool":
        assert opt.flag.startswith("--no-") and opt.default is True
        return
    if opt.kind == "fields":  # comma-separated or repeated: one list for the request
        args = cli.build_parser().parse_args(["generate", opt.flag, f"{opt.choices[0]},{opt.choices[1]}",
                                              opt.flag, opt.choices[2]])
        assert cli.option_fields(args, [opt])[opt.key] == ",".join(opt.choices[:3])
        return
    if opt.kind not in ("int", "float"):
        return
    assert action.type is (int if opt.kind == "int" else float)
    if opt.lo is None:  # a window edge: its task checks it with the source (test_bad_inputs, test_cli)
        return
    assert f"{opt.lo:g}–{opt.hi:g}" in action.help or action.nargs == 2
    monkeypatch.chdir(tmp_path)
    flow = ["--flow-edit"] if part == "flow_edit" else []
    shared = [o for o in options.BY_KEY.values() if o.flag == opt.flag]
    values = [str(o.default) for o in shared]
    values[shared.index(opt)] = str(int(opt.hi + 1) if opt.kind == "int" else opt.hi + 1)
    assert cli.main(["generate", *flow, opt.flag, *values]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {opt.flag} "), err
    assert not os.listdir(tmp_path)


def test_every_node_widget_of_an_option_matches_the_table(comfy):
    seen = set()
    for part, nodes in NODES.items():
        for node in nodes:
            info = comfy[0][P + node].GET_NODE_INFO_V1()
            specs = {k: v for section in ("required", "optional")
                     for k, v in (info["input"].get(section) or {}).items()}
            for opt in options.TABLES[part]:
                if opt.kind == "fields" and any(k.startswith(opt.widget + "_") for k in specs):
                    # one switch per choice (the Planner's decide_bpm, …): on when the default holds it
                    for choice in opt.choices:
                        widget = f"{opt.widget}_{choice}"
                        assert specs[widget][0] == "BOOLEAN", widget
                        if (P + node, widget) not in NODE_OWN:
                            assert specs[widget][1]["default"] == (choice in opt.default), widget
                    seen.add((part, opt.name))
                    continue
                if opt.widget not in specs:
                    continue
                seen.add((part, opt.name))
                if (P + node, opt.widget) in NODE_OWN:
                    continue
                kind, spec = specs[opt.widget][0], specs[opt.widget][1]
                where = f"{node}.{opt.widget}"
                assert spec["default"] == opt.widget_default, where
                assert bool(spec.get("advanced", False)) == opt.advanced, where
                assert spec["tooltip"].startswith(opt.help) or opt.kind == "seed", where
                if kind in ("INT", "FLOAT"):
                    assert (spec["min"], spec["max"]) == (opt.widget_min, opt.hi), where
                elif kind == "COMBO":
                    assert tuple(spec["options"]) == opt.widget_choices, where
                if opt.kind != "seed":  # a widget left alone means the request's default
                    assert opt.from_widget(opt.widget_default) == opt.default, where
    missing = [(part, o.name) for part, o in ALL if (part, o.name) not in seen]
    assert missing == list(NOT_A_WIDGET), missing
    for (node, widget) in NODE_OWN:  # every listed exception is a real widget of that node
        info = comfy[0][node].GET_NODE_INFO_V1()
        assert widget in {k for section in ("required", "optional") for k in (info["input"].get(section) or {})}


def test_auto_widget_values_mean_decided_per_run():
    steps, scaler, mode = (options.option("sampler", n) for n in ("steps", "dcw_scaler", "dcw_mode"))
    assert steps.from_widget(0) is None and steps.from_widget(8) == 8
    assert scaler.from_widget(-1.0) is None and scaler.from_widget(-0.5) is None and scaler.from_widget(0.0) == 0.0
    assert mode.from_widget("auto") is None and mode.from_widget("pix") == "pix"
    dcw = options.option("sampler", "dcw")
    assert [dcw.from_widget(v) for v in ("auto", "on", "off")] == [None, True, False]


def test_the_readme_option_lists_are_generated_from_the_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for part in options.TABLES:
        assert options.README_BEGIN.format(part=part) in text, part
        assert options.markdown(part) in text, f"README's {part} options are stale: run scripts/build_docs.py"
    assert options.readme_with_tables(text) == text


def test_the_request_docstring_lists_every_option():
    for o in options.BY_KEY.values():
        assert f" {o.key}," in request.__doc__ or f" {o.key};" in request.__doc__ or f" {o.key}." in request.__doc__, \
            o.key


def test_apg_eta_keeps_that_share_of_the_parallel_part():
    """The option added through the table alone (options.py, SamplerSettings, sampling.py): upstream apg_forward's
    eta, update = d_orthogonal + eta · d_parallel, with d_parallel the projection on v_cond over time."""
    from acestep_core import sampling

    g = torch.Generator().manual_seed(0)
    v_cond, v_uncond = torch.randn(2, 40, 3, generator=g), torch.randn(2, 40, 3, generator=g)
    d = (v_cond - v_uncond).double()
    u = v_cond.double() / v_cond.double().norm(dim=1, keepdim=True)
    par = (d * u).sum(dim=1, keepdim=True) * u
    for eta in (0.0, 0.5, 1.0):
        out = sampling.APG(4.0, norm_threshold=0.0, eta=eta)(v_cond, v_uncond)
        expected = v_cond.double() + 3.0 * (d - par + eta * par)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert request(apg_eta=0.25).sampler.apg_eta == 0.25


def test_the_pipeline_hands_every_sample_option_to_the_sampler(monkeypatch):
    """Options with a ``sample_arg`` reach sampling.sample by that keyword without the pipeline naming them."""
    import inspect

    from acestep_core import sampling

    params = inspect.signature(sampling.sample).parameters
    flow = inspect.signature(sampling.flow_edit).parameters
    for o in options.SAMPLER_OPTIONS:
        if o.sample_arg:
            assert o.sample_arg in params and o.sample_arg in flow, o.name
            assert params[o.sample_arg].default == o.default, o.name
