"""Tool: the HTML template ``dvc plots show`` renders with, so that its page works offline.

    python -m pipeline.plots_template [--check]

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without a network it shows nothing.
This writes a template with those libraries inlined, taken from the installed vl-convert-python (which
bundles them), to the file ``.dvc/config`` names (``[plots] html_template``); ``make`` runs it after
installing. The file is generated, never committed: it is some 900 kB of third-party JavaScript.
The page starts with a line saying that a preset which has not run has no plots (DVC's own warning for
them, "failed to load some plots", names no file). ``--check`` writes nothing and exits 1 when the file is missing or differs.
"""
from __future__ import annotations

from pathlib import Path

from deeplab.errors import PipelineError
from deeplab.paths import DVC_PLOTS_TEMPLATE
from pipeline import stage

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <script type="text/javascript">
(function () {
%BUNDLE%
})();
    </script>
    <style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>
</head>
<body>
    <p>Each run's plots (training loss, val IoU per class) appear here once the run has trained. A preset
    that has not run yet (the full one, before its GPU jobs) has no plot files: DVC leaves its plots out and
    says "DVC failed to load some plots" for the workspace. <code>dvc plots show smoke/dvc.yaml</code>
    shows the demo's plots alone.</p>
    {plot_divs}
</body>
</html>
"""  # {refresh_tag} and {plot_divs} are DVC's placeholders; {scripts}, its CDN tags, is left out


def render() -> str:
    """The page, the libraries inlined in a function scope (their top-level names stay out of the page's
    globals; the bundle itself sets window.vegaEmbed, vega and vegaLite, which DVC's plot divs call)."""
    import vl_convert
    bundle = vl_convert.javascript_bundle()
    if "</script" in bundle or any(f"{{{name}}}" in bundle for name in ("plot_divs", "scripts", "refresh_tag")):
        raise PipelineError("vl-convert's JavaScript bundle contains '</script' or a DVC placeholder, so it cannot "
                            "be inlined as it is; pin vl-convert-python to the release in requirements.lock")
    return PAGE.replace("%BUNDLE%", bundle)


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("plots_template", __doc__, preset=False, params=False)
    stage.add_check(parser)
    args = parser.parse_args(argv)

    def work() -> None:
        stage.write_or_check("plots_template", {Path(DVC_PLOTS_TEMPLATE): render()}, args.check,
                             "python -m pipeline.plots_template")
    return stage.run("plots_template", work)


if __name__ == "__main__":
    raise SystemExit(main())
