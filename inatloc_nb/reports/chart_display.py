"""Altair charts in notebooks: interactive (hover tooltips) in JupyterLab, offline, valid nbformat.

altair 6 offers two ways to show a chart that both fail here:

* its ``default``/``html`` renderer writes HTML that loads Vega from a CDN, so nothing shows
  offline;
* its ``mimetype``/``jupyterlab`` renderer puts the spec under
  ``application/vnd.vegalite.v6.json``. nbformat only lets ``application/json`` and
  ``application/*+json`` outputs hold a JSON object (every other mimetype must be a string), so
  papermill's write of the executed notebook fails validation; and no JupyterLab renders that
  mimetype anyway.

JupyterLab ships its own Vega-Lite renderer (``@jupyterlab/vega5-extension``, in the core
``jupyterlab`` package, bundling Vega 5, Vega-Lite 5 and vega-embed with its tooltip handler) for
``application/vnd.vegalite.v5+json``. The ``inatloc`` renderer registered here emits the chart's
spec under that mimetype (marked as Vega-Lite 5: the charts use nothing newer), a PNG of the same
chart (vl-convert) for viewers without Vega (GitHub, nbconvert, VS Code without it) and a plain
text line. JupyterLab picks the Vega-Lite view, with tooltips and without any network.
"""
from __future__ import annotations

import base64
from typing import Any

import altair as alt

__all__ = ["RENDERER", "VEGALITE5_MIME_TYPE", "enable", "notebook_bundle"]

#: The name the renderer is registered under in ``alt.renderers``.
RENDERER = "inatloc"
#: The Vega-Lite mimetype JupyterLab renders with its built-in extension.
VEGALITE5_MIME_TYPE = "application/vnd.vegalite.v5+json"
VEGALITE5_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"


def notebook_bundle(spec: dict[str, Any], png_scale: float = 1.0) -> dict[str, Any]:
    """The output bundle of a Vega-Lite ``spec`` (``chart.to_dict()``): the spec under
    :data:`VEGALITE5_MIME_TYPE`, a PNG (base64) and a text line; valid in an nbformat 4 notebook."""
    import vl_convert as vlc

    png = vlc.vegalite_to_png(spec, scale=png_scale)
    title = spec.get("title")
    text = title.get("text") if isinstance(title, dict) else title
    return {
        VEGALITE5_MIME_TYPE: {**spec, "$schema": VEGALITE5_SCHEMA},
        "image/png": base64.b64encode(png).decode("ascii"),
        "text/plain": f"<chart: {text}>" if text else "<chart>",
    }


def _render(spec: dict, png_scale: float = 1.0, **_options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle, and JupyterLab's embed options: SVG (crisp, one element per mark)."""
    return notebook_bundle(spec, png_scale=png_scale), {VEGALITE5_MIME_TYPE: {"embed_options": {"renderer": "svg"}}}


alt.renderers.register(RENDERER, _render)


def enable(png_scale: float = 1.0) -> None:
    """Show altair charts with the ``inatloc`` renderer (call once, at the top of a notebook)."""
    alt.renderers.enable(RENDERER, png_scale=png_scale)
