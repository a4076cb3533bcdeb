"""The ASGI app: ``POST /runs``, ``GET``/``DELETE /runs/{id}``, progress events, the page."""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    MutableMapping,
    Sequence,
)
from pathlib import Path
from typing import Any, cast

import attrs
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from modblocks._batching import StepBatcher
from modblocks._cache import Cache
from modblocks._node import Node
from modblocks._pipeline import Pipeline
from modblocks.exceptions import ModblocksError

from ._fields import request_fields
from ._mermaid import mermaid_js
from ._page import render_page
from ._request import Limits, RequestError, Requests
from ._runner import PipelineRunner, default_outputs
from ._runs import QueueFullError, Run, RunManager, Runner

__all__ = ["ServeOptions", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@attrs.frozen
class ServeOptions:
    """How a pipeline is served.

    Attributes:
        concurrency: runs at once (worker threads).
        max_queue: runs waiting beyond those; more get HTTP 503.
        keep: finished runs kept for ``GET /runs/{id}``.
        cache: give the pipeline a shared `mb.Cache` (when it has none), so a repeated
            request is served from it.
        cache_entries: the most results that cache keeps.
        token: when set, ``/runs`` needs ``Authorization: Bearer <token>``.
        outputs: the outputs each result holds (default: ``images``, else every output that
            JSON carries).
        preview_value: the state value drawn in step previews.
        preview_every: the default preview interval of the page (steps; 0: none).
        limits: request and image size limits.
        title: the page's title (default: the pipeline's name).
        batching: batch the denoising steps of the runs in flight (True, or a `StepBatcher`
            with its settings): their model calls join, step by step. Runs in flight are
            the *concurrency* worker threads, so give it room (8, say).
    """

    concurrency: int = 1
    max_queue: int = 64
    keep: int = 256
    cache: bool = True
    cache_entries: int = 256
    token: str | None = None
    outputs: Sequence[str] | None = None
    preview_value: str = "latents"
    preview_every: int = 5
    limits: Limits = attrs.field(factory=Limits)
    title: str | None = None
    batching: bool | StepBatcher = False


class _BodyLimit:
    """Refuses request bodies over *limit* bytes with 413, declared or streamed."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0
        refused = False

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            if refused:
                await _too_large(self.limit, send)


class _BodyTooLargeError(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = json.dumps({"detail": f"the request is over the limit of {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    pipe: Pipeline | Node,
    options: ServeOptions | None = None,
    *,
    runner: Runner | None = None,
) -> FastAPI:
    """Make the ASGI app that serves *pipe* (run it with uvicorn, or `modblocks serve`).

    Args:
        pipe: the pipeline; its typed inputs make the request model and the page's form. A
            bare node (its blocks) is enough when *runner* runs the jobs elsewhere.
        options: limits, auth, cache and preview settings (`ServeOptions`).
        runner: what runs each job; by default a `PipelineRunner` in worker threads here
            (`modblocks.ray.serve` passes one that calls Ray Serve replicas).

    Returns:
        A FastAPI app; ``app.state.runs`` is its `RunManager` (closed when the app shuts down).
    """
    options = options or ServeOptions()
    blocks = pipe.blocks if isinstance(pipe, Pipeline) else pipe
    label = blocks._label
    fields = request_fields(blocks.inputs, label)
    requests = Requests(fields, label, options.limits)
    if runner is None:
        if not isinstance(pipe, Pipeline):
            msg = f"serving `{label}` needs its components: pass an `mb.Pipeline`, or a runner."
            raise ModblocksError(msg)
        runner = local_runner(pipe, options)
    runs = RunManager(
        runner, concurrency=options.concurrency, max_queue=options.max_queue, keep=options.keep
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            runs.close()

    description = blocks.description or f"Runs the modblocks pipeline `{label}`."
    app = FastAPI(
        title=options.title or label,
        description=f"{description}\n\nServed by modblocks: `POST /runs` with the inputs below.",
        lifespan=lifespan,
    )
    app.state.runs = runs
    app.add_middleware(_BodyLimit, limit=options.limits.max_request_bytes)
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008 - FastAPI's way
        if options.token is None:
            return
        given = "" if credentials is None else credentials.credentials
        if not hmac.compare_digest(given.encode(), options.token.encode()):
            raise HTTPException(
                401,
                "this server needs a token: send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def find(run_id: str) -> Run:
        run = runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id} (it never existed or has expired)")
        return run

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": requests.schema()},
                "multipart/form-data": {"schema": requests.form_schema()},
            },
        }
    }

    @app.post(
        "/runs",
        status_code=202,
        openapi_extra=body_doc,
        dependencies=[Depends(authorized)],
        summary=f"Start a run of {label}",
        responses={413: {"description": "too large"}, 503: {"description": "queue full"}},
    )
    async def start_run(
        request: Request, wait: bool = False, preview_every: int = 0
    ) -> JSONResponse:
        """Queue a run with the inputs in the body (JSON, or a multipart form with files).

        ``wait=true`` answers when the run has finished; otherwise at once, with the id to
        follow (``GET /runs/{id}``, ``GET /runs/{id}/events``). ``preview_every=k`` sends a
        preview image every k loop steps in the events.
        """
        try:
            inputs, seeds = await _parse(request, requests)
        except RequestError as err:
            return JSONResponse(
                {"detail": str(err), "errors": list(err.errors)}, status_code=err.status
            )
        try:
            run = runs.submit(inputs, seeds, preview_every=max(0, preview_every))
        except QueueFullError as err:
            return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})
        if wait:
            async for _ in run.updates():
                pass
            return JSONResponse(run.to_json(), status_code=200)
        return JSONResponse(run.to_json(), status_code=202, headers={"Location": f"runs/{run.id}"})

    @app.get("/runs/{run_id}", dependencies=[Depends(authorized)], summary="A run's status")
    async def get_run(run_id: str) -> JSONResponse:
        """The run's status, progress, and its result (outputs, images as base64 PNG) or error."""
        return JSONResponse(find(run_id).to_json())

    @app.delete("/runs/{run_id}", dependencies=[Depends(authorized)], summary="Cancel a run")
    async def cancel_run(run_id: str) -> JSONResponse:
        """Cancel the run: a queued one at once, a running one at its next block or step."""
        find(run_id)
        run = runs.cancel(run_id)
        assert run is not None
        return JSONResponse(run.to_json())

    @app.get(
        "/runs/{run_id}/events",
        dependencies=[Depends(authorized)],
        summary="Progress as server-sent events",
        response_class=StreamingResponse,
    )
    async def run_events(run_id: str) -> StreamingResponse:
        """Stream the run's progress as server-sent events, JSON in each event's data.

        Events: ``block``, ``cached``, ``step``, ``preview``, ``status``, then ``done`` with
        the run's record.
        """
        run = find(run_id)

        async def stream() -> AsyncIterator[str]:
            async for batch in run.updates():
                for message in batch:
                    yield f"event: {message['type']}\ndata: {json.dumps(message)}\n\n"
            yield f"event: done\ndata: {json.dumps(run.to_json())}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/health", summary="Liveness and run counts")
    async def health() -> dict[str, Any]:
        """Counts of runs by status."""
        return {"ok": True, "runs": runs.stats()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            render_page(
                blocks,
                fields,
                title=options.title or label,
                token=options.token is not None,
                preview_every=options.preview_every,
                mermaid=mermaid_js() is not None,
            )
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "mermaid.min.js":
            path = mermaid_js()
        else:
            path = STATIC / name if name in _STATIC_FILES else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no static file {name}")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(
            path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=3600"}
        )

    return app


_STATIC_FILES = frozenset({"app.js", "app.css"})


def local_runner(pipe: Pipeline, options: ServeOptions) -> PipelineRunner:
    """The runner of *pipe* here, with the cache, batching and outputs that *options* ask for."""
    if options.cache and pipe.cache is None:
        pipe = attrs.evolve(pipe, cache=Cache(max_entries=options.cache_entries))
    if options.batching is not False:
        batcher = StepBatcher() if options.batching is True else options.batching
        pipe = attrs.evolve(pipe, hooks=(*pipe.hooks, batcher))
    outputs = options.outputs or default_outputs(pipe.blocks.outputs)
    return PipelineRunner(pipe, outputs, options.preview_value)


def _form_value(requests: Requests, name: str, value: str) -> Any:
    """A form's text as the field takes it: JSON for lists and dicts, else the text."""
    field = requests.fields.get(name)
    if field is not None and field.form_json and value:
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


async def _parse(request: Request, requests: Requests) -> tuple[dict[str, Any], dict[str, int]]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        limits = requests.limits
        body: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        try:
            async with request.form(
                max_files=16, max_fields=256, max_part_size=limits.max_image_bytes
            ) as form:  # closes the uploaded files' temporary copies
                for name, value in form.multi_items():
                    if isinstance(value, str):
                        body[name] = _form_value(requests, name, value)
                    else:
                        data = await value.read(limits.max_image_bytes + 1)
                        if data:
                            files[name] = data
        except StarletteHTTPException as err:
            raise RequestError(f"bad multipart form: {err.detail}", status=400) from None
        return requests.parse(body, files)
    raw = await request.body()
    try:
        body_json: Any = json.loads(raw or b"{}")
    except ValueError as err:
        raise RequestError(f"the body is not JSON: {err}") from None
    if not isinstance(body_json, dict):
        msg = f"the body must be a JSON object of inputs, not {type(body_json).__name__}"
        raise RequestError(msg)
    return requests.parse(cast("dict[str, Any]", body_json))
