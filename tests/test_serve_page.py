"""The served page in a real headless Chromium: fill the form, watch previews, cancel, upload.

Drives Debian's ``chromium`` over the DevTools protocol with the client of
``scripts/check_site.py``, against `modblocks serve` on the demo digits pipeline (uvicorn on
127.0.0.1). Skipped where no Chromium is installed, except in CI (``CI=true``), where that is
a failure: CI installs it. ``MODBLOCKS_SCREENSHOTS=DIR`` keeps the page's screenshot there
(``docs/images/serve-page.png`` is one).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import uvicorn
from PIL import Image

from modblocks.demo import load_pipeline
from modblocks.serve import ServeOptions, create_app

ROOT = Path(__file__).resolve().parent.parent


def _load_check_site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "scripts" / "check_site.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


check_site = sys.modules.get("check_site") or _load_check_site()


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        found: str = check_site.find_chromium(None)
    except check_site.CheckError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {err}")
        pytest.skip(str(err))
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = create_app(load_pipeline(), ServeOptions(concurrency=2))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def _until(tools: Any, expression: str, timeout: float = 120) -> Any:
    """Evaluate *expression* in the page until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = tools.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            state = tools.evaluate("document.getElementById('status').textContent")
            pytest.fail(f"timed out waiting for {expression!r} (status: {state!r})")
        time.sleep(0.1)


def _fill(tools: Any, **values: object) -> None:
    for name, value in values.items():
        element = "preview-every" if name == "preview_every" else f"f-{name}"
        tools.evaluate(f"document.getElementById({element!r}).value = {str(value)!r}")


def _upload(tools: Any, selector: str, path: Path) -> None:
    root = tools.call("DOM.getDocument", depth=1)["root"]["nodeId"]
    node = tools.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
    tools.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.slow
def test_the_page_runs_the_digits_pipeline_with_previews_cancels_and_uploads(
    chromium, server, tmp_path
):
    with check_site.browser(chromium) as tools:
        tools.events.clear()
        tools.call("Page.navigate", url=server)
        tools.wait_event("Page.loadEventFired")
        # The diagram renders with the mermaid served by the app itself.
        _until(tools, "!!document.querySelector('pre.mermaid svg')", timeout=30)

        # Fill the form and run: previews come every 2 steps, then the image joins the gallery.
        _fill(tools, digits="3", num_inference_steps=12, seed=7, preview_every=2)
        tools.evaluate("document.getElementById('run').click()")
        _until(tools, "document.getElementById('status').dataset.status === 'succeeded'")
        assert int(tools.evaluate("document.body.dataset.previews")) == 6
        assert tools.evaluate("document.getElementById('preview').naturalWidth") == 64
        src = tools.evaluate("document.querySelector('#gallery img.result').src")
        expected = load_pipeline()(
            digits="3",
            num_inference_steps=12,
            generator=torch.Generator().manual_seed(7),
            output="images",
        )
        assert src == f"data:image/png;base64,{_png_base64(expected[0])}"
        assert tools.evaluate("document.querySelector('#gallery img.result').naturalWidth") == 16
        assert tools.evaluate("document.getElementById('progress').value") == 12

        # The screenshot of the docs: form, previews, gallery and diagram.
        shot = tmp_path / "serve-page.png"
        check_site.screenshot(tools, shot)
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("MODBLOCKS_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)

        # A long run, cancelled from the page once it has started stepping.
        _fill(tools, digits="0", num_inference_steps=1000, preview_every=0)
        tools.evaluate("document.getElementById('run').click()")
        _until(
            tools,
            "!document.getElementById('cancel').disabled"
            " && document.getElementById('progress').value >= 1",
        )
        tools.evaluate("document.getElementById('cancel').click()")
        _until(tools, "document.getElementById('status').dataset.status === 'cancelled'")
        assert tools.evaluate("document.getElementById('progress').value") < 1000
        assert tools.evaluate("document.querySelectorAll('#gallery img.result').length") == 1

        # Uploads: repaint the lower half of a digit given as a PNG file.
        digit, mask = tmp_path / "digit.png", tmp_path / "mask.png"
        expected[0].save(digit)
        lower = Image.new("L", (16, 16), 0)
        lower.paste(255, (0, 8, 16, 16))
        lower.save(mask)
        _upload(tools, "#f-image", digit)
        _upload(tools, "#f-mask_image", mask)
        _fill(tools, digits="3", num_inference_steps=4, preview_every=1)
        tools.evaluate("document.getElementById('run').click()")
        _until(tools, "document.querySelectorAll('#gallery img.result').length === 2")
        assert tools.evaluate("document.getElementById('status').dataset.status") == "succeeded"

        problems = check_site._event_problems(tools.events, server.split("/")[2])
        assert not problems, problems
