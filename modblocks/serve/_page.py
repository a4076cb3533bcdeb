"""The web page at ``/``: a form made from the request fields, progress, previews, a gallery."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from modblocks._node import Node

from ._fields import Field, _optional_inner

__all__ = ["render_page"]

_TEXTAREAS = frozenset({"prompt", "negative_prompt", "prompt_2", "negative_prompt_2"})


def _attrs(**values: Any) -> str:
    parts: list[str] = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        key = name.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{html.escape(str(value))}"')
    return " ".join(parts)


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"


def _control(field: Field) -> str:
    """The form control of one field."""
    name = field.name
    default = None if field.required or field.default is None else field.default
    common = {"id": f"f-{name}", "name": name, "required": field.required}
    if field.kind == "image":
        return f"<input {_attrs(type='file', accept='image/png,image/jpeg,image/webp', **common)}>"
    if field.kind == "seed":
        return f"<input {_attrs(type='number', min=0, step=1, placeholder='random', **common)}>"
    if field.choices:
        options = "".join(
            f"<option{' selected' if choice == default else ''}>{html.escape(str(choice))}</option>"
            for choice in field.choices
        )
        return f"<select {_attrs(**common)}>{options}</select>"
    if _optional_inner(field.annotation) is bool:
        options = "".join(
            f"<option{' selected' if default is flag else ''}>{str(flag).lower()}</option>"
            for flag in (True, False)
        )
        return f"<select {_attrs(**common)}>{options}</select>"
    if field.number is not None:
        step = 1 if field.number is int else "any"
        return (
            "<input "
            + _attrs(
                type="number",
                step=step,
                min=_number(field.minimum),
                max=_number(field.maximum),
                value=None if default is None else default,
                **common,
            )
            + ">"
        )
    value = default if isinstance(default, str) else None
    if value is None and default is not None:
        value = json.dumps(default)
    if name in _TEXTAREAS:
        return f"<textarea {_attrs(rows=3, **common)}>{html.escape(value or '')}</textarea>"
    return f"<input {_attrs(type='text', value=value, **common)}>"


def _row(field: Field) -> str:
    bounds = ""
    if field.kind == "value" and (field.minimum is not None or field.maximum is not None):
        low = _number(field.minimum) or "…"
        high = _number(field.maximum) or "…"
        bounds = f" <span class='range'>[{low}, {high}]</span>"
    description = html.escape(field.description)
    required = " <span class='req'>required</span>" if field.required else ""
    return (
        f"<div class='field' data-kind='{field.kind}'>"
        f"<label for='f-{html.escape(field.name)}'><code>{html.escape(field.name)}</code>"
        f"{required}{bounds}</label>{_control(field)}"
        f"<small>{description}</small></div>"
    )


def render_page(
    blocks: Node,
    fields: Sequence[Field],
    *,
    title: str,
    token: bool,
    preview_every: int,
    mermaid: bool,
) -> str:
    """The page's HTML: all paths relative, so it works under any route prefix."""
    rows = "\n".join(_row(field) for field in fields)
    token_row = (
        "<div class='field'><label for='token'>API token</label>"
        "<input id='token' type='password' autocomplete='off'></div>"
        if token
        else ""
    )
    diagram = html.escape(blocks.to_mermaid())
    script = (
        "<script src='static/mermaid.min.js'></script>"
        "<script>mermaid.initialize({startOnLoad: true, securityLevel: 'strict'});</script>"
        if mermaid
        else "<p class='note'>mermaid is not available here: the diagram is shown as text.</p>"
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · modblocks</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/app.css">
</head>
<body data-previews="0">
<header><h1>{html.escape(title)}</h1><p>{html.escape(blocks.description)}</p>
<nav><a href="docs">API (OpenAPI)</a></nav></header>
<main>
<section class="panel">
<form id="run-form">
{rows}
<div class="field"><label for="preview-every">preview every (steps, 0: none)</label>
<input id="preview-every" type="number" min="0" step="1" value="{preview_every}"></div>
{token_row}
<div class="buttons"><button id="run" type="submit">Run</button>
<button id="cancel" type="button" disabled>Cancel</button></div>
</form>
</section>
<section class="panel">
<h2>Progress</h2>
<p id="status" data-status="idle">idle</p>
<progress id="progress" value="0" max="1"></progress>
<p id="block"></p>
<img id="preview" alt="step preview" hidden>
<pre id="error" hidden></pre>
<h2>Results</h2>
<div id="gallery"></div>
</section>
</main>
<section class="panel diagram">
<h2>Pipeline</h2>
<pre class="mermaid">{diagram}</pre>
</section>
{script}
<script src="static/app.js"></script>
</body>
</html>
"""
