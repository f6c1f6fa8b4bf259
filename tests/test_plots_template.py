"""The offline page template of `dvc plots show`: DVC's placeholders kept, Vega inlined, nothing fetched."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipeline.plots_template
from deeplab.paths import DVC_PLOTS_TEMPLATE
from tests.train_fixtures import ROOT


def test_the_template_inlines_vega_and_keeps_dvcs_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert pipeline.plots_template.main(["--check"]) == 1  # missing
    assert "regenerate with `python -m pipeline.plots_template`" in capsys.readouterr().err
    assert pipeline.plots_template.main([]) == 0
    page = (tmp_path / DVC_PLOTS_TEMPLATE).read_text()
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1 and "{scripts}" not in page
    assert not re.search(r"<script[^>]+src=", page) and "window.vegaEmbed=" in page and len(page) > 500_000
    assert pipeline.plots_template.main(["--check"]) == 0
    # DVC's config names this file, relative to .dvc/
    assert f"html_template = {Path(DVC_PLOTS_TEMPLATE).name}" in (ROOT / ".dvc" / "config").read_text()
