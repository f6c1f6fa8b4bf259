"""Every ``pipeline/*`` tool follows one convention (pipeline/stage.py): the same option for the same thing,
with the same help, and one way of writing generated files."""
from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import pipeline
from pipeline import stage

TOOLS = sorted(m.name for m in pkgutil.iter_modules(pipeline.__path__) if m.name != "stage")
# The spellings each thing had before the convention: none may come back.
RETIRED = ("--save-predictions", "--scales", "--flip", "--write", "--output", "--output-dir")
GENERATES = {"table", "plan", "dvc_presets", "plots_template", "reference_eval"}  # tools that write generated files


def _parser(tool: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a tool builds, caught where it parses (its work is never run)."""
    caught: list[argparse.ArgumentParser] = []

    def parse_args(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    module = importlib.import_module(f"pipeline.{tool}")
    with pytest.raises(SystemExit):
        module.main(["--cell", "x", "-m", "pipeline.train"] if tool == "gpu_slot" else [])
    assert caught, f"pipeline.{tool} builds no parser"
    return caught[0]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_every_tool_is_built_on_the_stage_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    for tool in TOOLS:
        assert _parser(tool, monkeypatch).prog == f"python -m pipeline.{tool}", tool


def test_the_same_thing_has_the_same_option_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _options(stage.parser("x", "doc"))
    runs = argparse.ArgumentParser()
    stage.add_run(runs)
    check = argparse.ArgumentParser()
    stage.add_check(check)
    shared = {**reference, **_options(runs), **_options(check)}
    for tool in TOOLS:
        options = _options(_parser(tool, monkeypatch))
        assert not set(RETIRED) & set(options), (tool, set(RETIRED) & set(options))
        run_flags = ("--cell",) if "--seed" in options else ()  # gpu_slot's --cell only names a GPU count
        for flag in ("--preset", "--params", "--seed", "--check", *run_flags):
            if flag in options:
                assert (options[flag].help, options[flag].required, options[flag].default) == \
                       (shared[flag].help, shared[flag].required, shared[flag].default), (tool, flag)
        assert ("--check" in options) == (tool in GENERATES), tool
        if "--out" in options:
            assert options["--out"].metavar == "DIR", tool
        if "--multi-scale" in options:
            assert isinstance(options["--multi-scale"], argparse._StoreTrueAction), tool
    assert {t for t in TOOLS if "--preset" not in _options(_parser(t, monkeypatch))} == \
        {"dvc_presets", "plots_template", "gpu_slot", "folder"}  # the tools that work on no single preset
