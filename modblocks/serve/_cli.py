"""``modblocks serve module:pipe``: load a pipeline by its import path and serve it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modblocks._batching import StepBatcher
from modblocks._node import Node
from modblocks._pipeline import Pipeline
from modblocks._progress import progress
from modblocks.exceptions import ModblocksError

from ._request import Limits

if TYPE_CHECKING:
    from ._app import ServeOptions

__all__ = ["load_pipeline", "main"]

_MB = 2**20


def load_pipeline(target: str) -> Pipeline:
    """Load the pipeline named ``module:name`` (``name`` may be dotted).

    The object found may be a `Pipeline`, a node (served without components), or a function
    of no arguments that returns one of them.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        msg = f"give the pipeline as `module:name` (e.g. `myapp.pipelines:pipe`), not {target!r}."
        raise ModblocksError(msg)
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)  # as `python -m` and uvicorn find the user's modules
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    if not isinstance(value, (Pipeline, Node)) and callable(value):
        value = value()
    if isinstance(value, Node):
        value = Pipeline(value)
    if not isinstance(value, Pipeline):
        msg = (
            f"`{target}` is {type(value).__name__}, not an `mb.Pipeline` (or a node, or a "
            "function that returns one)."
        )
        raise ModblocksError(msg)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modblocks serve",
        description="Serve a modblocks pipeline over HTTP: an API (/docs) and a page (/).",
    )
    add = parser.add_argument
    add("target", help="the pipeline as module:name, e.g. modblocks.demo:load_pipeline")
    add("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)")
    add("--port", type=int, default=8000, help="port (default: 8000)")
    add(
        "--token",
        default=os.environ.get("MODBLOCKS_TOKEN"),
        help="bearer token for /runs (default: $MODBLOCKS_TOKEN; none: no auth)",
    )
    add("--concurrency", type=int, help="runs at once (default: 1, or 8 with --batching)")
    add("--max-queue", type=int, default=64, help="runs waiting beyond those (default: 64)")
    add("--keep", type=int, default=256, help="finished runs kept for GET /runs/{id}")
    add("--no-cache", action="store_true", help="no shared cache across requests")
    add("--cache-entries", type=int, default=256, help="results the cache keeps (default: 256)")
    add("--output", action="append", help="an output to return (repeat; default: images)")
    add("--preview-every", type=int, default=5, help="the page's preview interval in steps")
    add("--preview-value", default="latents", help="the state value previews draw")
    add("--max-request-mb", type=float, default=32, help="largest request body (MB)")
    add("--max-image-mb", type=float, default=16, help="largest image file (MB)")
    add("--max-image-pixels", type=int, default=4096 * 4096, help="most pixels per image")
    add(
        "--batching",
        action="store_true",
        help="batch the denoising steps of the runs in flight (continuous batching)",
    )
    add("--batch-wait", type=float, default=50, help="ms a step waits for other runs (default: 50)")
    add("--max-batch-rows", type=int, help="most rows in one batched model call (default: any)")
    add("--batch-parallel", type=int, default=1, help="parts of each batch run at once")
    add("--log-level", default="info", help="uvicorn's log level")
    return parser


def _options(args: argparse.Namespace) -> ServeOptions:
    """The server's options from the parsed command line."""
    from ._app import ServeOptions

    batching: StepBatcher | bool = args.batching and StepBatcher(
        max_wait=args.batch_wait / 1000,
        max_rows=args.max_batch_rows,
        parallel=args.batch_parallel,
    )
    return ServeOptions(
        concurrency=args.concurrency or (8 if args.batching else 1),
        batching=batching,
        max_queue=args.max_queue,
        keep=args.keep,
        cache=not args.no_cache,
        cache_entries=args.cache_entries,
        token=args.token or None,
        outputs=args.output,
        preview_every=args.preview_every,
        preview_value=args.preview_value,
        limits=Limits(
            max_request_bytes=int(args.max_request_mb * _MB),
            max_image_bytes=int(args.max_image_mb * _MB),
            max_image_pixels=args.max_image_pixels,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, load the pipeline and serve it with uvicorn until stopped."""
    import uvicorn

    from ._app import create_app

    args = _parser().parse_args(argv)
    progress(disable=True)  # a server reports steps in its events, not as bars in its log
    pipe = load_pipeline(args.target)
    options = _options(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and options.token is None:
        print(  # noqa: T201 - a warning for the person starting the server
            f"warning: serving on {args.host} without --token: anyone who reaches it can run "
            "the pipeline.",
            file=sys.stderr,
        )
    uvicorn.run(create_app(pipe, options), host=args.host, port=args.port, log_level=args.log_level)
    return 0
