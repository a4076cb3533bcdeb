"""Serve a pipeline over HTTP: a JSON API with progress events, and a page to try it.

Install with ``pip install "modblocks[serve]"`` and run ``modblocks serve module:pipe``
(or ``python -m modblocks.serve module:pipe``), or build the ASGI app yourself::

    from modblocks.serve import create_app
    app = create_app(pipe)            # then: uvicorn.run(app)

The request model of ``POST /runs`` is generated from the pipeline's typed inputs (names,
types, defaults, ``Doc`` descriptions), so ``/docs`` documents the pipeline; images travel as
base64 PNG (or files in a multipart form) and a `torch.Generator` input as an integer seed.
``GET /runs/{id}`` reports a run, ``DELETE /runs/{id}`` cancels it, ``GET /runs/{id}/events``
streams its progress (steps, blocks, previews) as server-sent events, and ``/`` is a page
with a form made from the same signatures.
"""

from __future__ import annotations

from ._app import ServeOptions, create_app
from ._cli import load_pipeline, main
from ._fields import Field, request_fields
from ._request import Limits, RequestError
from ._runner import PipelineRunner
from ._runs import Job, QueueFullError, Run, RunManager, Runner

__all__ = [
    "Field",
    "Job",
    "Limits",
    "PipelineRunner",
    "QueueFullError",
    "RequestError",
    "Run",
    "RunManager",
    "Runner",
    "ServeOptions",
    "create_app",
    "load_pipeline",
    "main",
    "request_fields",
]
