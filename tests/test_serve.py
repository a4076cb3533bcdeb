"""`modblocks.serve`: the HTTP API around the demo digits pipeline, with an in-process client."""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import modblocks as mb
from modblocks.demo import load_pipeline
from modblocks.serve import Limits, ServeOptions, create_app
from modblocks.serve import load_pipeline as load_target
from modblocks.serve._cli import _options, _parser
from modblocks.serve._images import decode_image, preview, to_input
from modblocks.serve._runs import MAX_MESSAGES

TOKEN = "s3cret"  # noqa: S105 - the test server's token
STEPS = 2  # denoising steps of most runs: enough for a loop, cheap on a loaded machine


@pytest.fixture(scope="module")
def pipe() -> mb.Pipeline:
    return load_pipeline()


@pytest.fixture
def client(pipe: mb.Pipeline) -> Iterator[TestClient]:
    with TestClient(create_app(pipe)) as test_client:
        yield test_client


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _expected(pipe: mb.Pipeline, digits: str, seed: int, steps: int = STEPS) -> list[str]:
    """The PNGs a direct run of the pipeline makes for these inputs."""
    images = pipe(
        digits=digits,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output="images",
    )
    return [_png(image) for image in images]


def serve_options(argv: list[str]) -> ServeOptions:
    """The options `modblocks serve` makes of a command line."""
    return _options(_parser().parse_args(argv))


def _same_images(got: list[str], expected: list[str], batched: bool = False) -> bool:
    """Equal PNGs; from batched runs, equal but for rounding (at most 1 gray level apart).

    A batched run's pixels are within 1e-5 of its solo run's, so that a pixel next to a
    rounding boundary can land on the other side of it.
    """
    if not batched or got == expected:
        return got == expected
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected, strict=True):
        pixels = [
            Image.open(io.BytesIO(base64.b64decode(x))).convert("L").tobytes() for x in (a, b)
        ]
        if max(abs(p - q) for p, q in zip(*pixels, strict=True)) > 1:
            return False
    return True


def _wait(client: TestClient, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record: dict[str, Any] = client.get(f"/runs/{run_id}").json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.02)
    pytest.fail(f"run {run_id} did not finish in {timeout} s")


def _events(client: TestClient, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's server-sent events, parsed (the stream ends when the run has finished)."""
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/runs/{run_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


# -- the request model -------------------------------------------------------------------------


def test_openapi_documents_the_pipeline_inputs(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/runs"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    assert props["digits"]["default"] == "0123456789"
    assert props["digits"]["description"] == "the digits to draw, e.g. '0123456789'"
    assert props["num_inference_steps"]["minimum"] == 1
    assert props["num_inference_steps"]["default"] == 50
    assert "generator" not in props  # a torch.Generator travels as its seed
    assert "seed" in props
    assert props["image"]["contentMediaType"] == "image/png"
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["mask_image"]["format"] == "binary"


def test_a_run_returns_the_images_of_a_direct_run_with_the_same_seed(client, pipe):
    response = client.post(
        "/runs?wait=true", json={"digits": "47", "num_inference_steps": STEPS, "seed": 5}
    )
    assert response.status_code == 200
    record = response.json()
    assert record["status"] == "succeeded"
    assert record["result"]["outputs"]["images"] == _expected(pipe, "47", 5)
    assert record["result"]["seeds"] == {"generator": 5}
    image = Image.open(io.BytesIO(base64.b64decode(record["result"]["outputs"]["images"][0])))
    assert (image.format, image.size) == ("PNG", (16, 16))


def test_a_run_without_a_seed_reports_the_seed_it_drew(client, pipe):
    record = client.post("/runs?wait=true", json={"digits": "1", "num_inference_steps": 1}).json()
    seed = record["result"]["seeds"]["generator"]
    assert record["result"]["outputs"]["images"] == _expected(pipe, "1", seed, steps=1)


def test_progress_events_name_steps_blocks_and_send_previews(client):
    started = client.post(
        "/runs?preview_every=2", json={"digits": "3", "num_inference_steps": 4, "seed": 0}
    )
    assert started.status_code == 202
    run_id = started.json()["id"]
    events = _events(client, run_id)
    kinds = [kind for kind, _ in events]
    steps = [data for kind, data in events if kind == "step"]
    assert [(s["index"], s["total"]) for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[0]["path"] == "digits > denoise"
    blocks = [data["path"] for kind, data in events if kind == "block"]
    assert blocks[:3] == [
        "digits > digit_labels",
        "digits > set_timesteps",
        "digits > prepare_latents",
    ]
    previews = [data for kind, data in events if kind == "preview"]
    assert [p["index"] for p in previews] == [2, 4]
    picture = Image.open(io.BytesIO(base64.b64decode(previews[0]["png"])))
    assert picture.size == (64, 64)  # the 16x16 latents, enlarged
    assert kinds[-1] == "done"
    assert events[-1][1]["status"] == "succeeded"
    assert ("status", {"type": "status", "status": "running"}) in events


def test_a_repeated_request_is_served_from_the_shared_cache(client):
    inputs = {"digits": "28", "num_inference_steps": STEPS, "seed": 11}
    first = client.post("/runs?wait=true", json=inputs).json()["result"]
    again = client.post("/runs?wait=true", json=inputs).json()["result"]
    assert first["cached"] == []
    assert again["cached"] == ["digits"]  # the whole pipeline, served with one lookup
    assert again["outputs"] == first["outputs"]


def test_the_cache_can_be_turned_off(pipe):
    inputs = {"digits": "2", "num_inference_steps": 1, "seed": 1}
    with TestClient(create_app(pipe, ServeOptions(cache=False))) as client:
        client.post("/runs?wait=true", json=inputs)
        assert client.post("/runs?wait=true", json=inputs).json()["result"]["cached"] == []


# -- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"digitz": "1"}, "`digits` has no input `digitz`. Did you mean `digits`?"),
        (
            {"num_inference_steps": "many"},
            "`num_inference_steps` (expected int, 1 <= value <= 1000)",
        ),
        ({"guidance_scale": -1}, "greater than or equal to 0"),
        ({"seed": -3}, "`seed` (expected an integer seed)"),
        ({"image": "not base64!"}, "`image`: not valid base64"),
        ({"image": base64.b64encode(b"GIF89a...").decode()}, "`image`: not a readable image"),
    ],
)
def test_bad_inputs_get_422_with_a_message_that_says_what_is_wrong(client, body, message):
    response = client.post("/runs", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_a_body_that_is_not_a_json_object_gets_422(client):
    assert client.post("/runs", content=b"[1, 2]").status_code == 422
    response = client.post("/runs", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not JSON" in response.json()["detail"]


def test_a_failing_block_fails_the_run_with_the_modblocks_error(client):
    record = client.post("/runs?wait=true", json={"digits": "4a", "num_inference_steps": 1}).json()
    assert record["status"] == "failed"
    assert record["error"]["type"] == "BlockError"
    assert record["error"]["path"] == "digits > digit_labels"
    assert "`digits` must be a string of digits like '0123', not '4a'" in record["error"]["message"]


def test_an_unknown_run_is_404(client):
    assert client.get("/runs/nope").status_code == 404
    assert client.delete("/runs/nope").status_code == 404


# -- images in -------------------------------------------------------------------------------


def test_images_and_masks_upload_as_multipart_files_and_repaint(client, pipe):
    drawn = pipe(digits="8", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3))
    picture = drawn["images"][0]
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 8, 16, 16))  # repaint the lower half
    files = {
        "image": ("digit.png", base64.b64decode(_png(picture)), "image/png"),
        "mask_image": ("mask.png", base64.b64decode(_png(mask)), "image/png"),
    }
    data = {"digits": "8", "num_inference_steps": str(STEPS), "seed": "4"}
    record = client.post("/runs?wait=true", data=data, files=files).json()
    assert record["status"] == "succeeded", record["error"]
    expected = pipe(
        digits="8",
        num_inference_steps=STEPS,
        image=to_input(picture, tensor=True, mask=False),
        mask_image=to_input(mask, tensor=True, mask=True),
        generator=torch.Generator().manual_seed(4),
        output="images",
    )
    assert record["result"]["outputs"]["images"] == [_png(expected[0])]
    repainted = Image.open(io.BytesIO(base64.b64decode(record["result"]["outputs"]["images"][0])))
    top = lambda image: image.crop((0, 0, 16, 8)).tobytes()  # noqa: E731
    assert top(repainted) == top(picture)  # the kept half is the uploaded image


def test_images_convert_to_the_tensors_and_pil_images_the_pipeline_takes():
    gray = Image.new("L", (4, 2), 255)
    pixels = to_input(gray, tensor=True, mask=False)
    assert pixels.shape == (1, 1, 2, 4)
    assert pixels.max().item() == 1.0  # white is 1 in [-1, 1]
    mask = to_input(Image.new("RGB", (4, 2), (255, 255, 255)), tensor=True, mask=True)
    assert mask.shape == (1, 1, 2, 4)
    assert mask.min().item() == 1.0  # white repaints, in [0, 1]
    assert to_input(gray, tensor=False, mask=True).mode == "L"
    assert to_input(Image.new("RGBA", (2, 2)), tensor=False, mask=False).mode == "RGB"


def test_previews_draw_gray_rgb_and_sd_latents():
    assert preview(torch.zeros(2, 1, 16, 16)).size == (128, 64)
    assert preview(torch.zeros(1, 3, 8, 8)).mode == "RGB"
    assert preview(torch.zeros(1, 4, 64, 64)).size == (64, 64)
    assert preview(torch.zeros(1, 7, 8, 8)).mode == "L"


# -- limits -----------------------------------------------------------------------------------


def _bomb(side: int) -> bytes:
    """A PNG whose header says *side* x *side* pixels: 70 bytes that would decode to side²."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 0).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[start : start + 17]))
    data[start + 17 : start + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(pipe):
    limits = Limits(max_image_pixels=64 * 64)
    with TestClient(create_app(pipe, ServeOptions(limits=limits))) as client:
        bomb = _bomb(3000)
        assert len(bomb) < 100
        response = client.post("/runs", json={"image": base64.b64encode(bomb).decode()})
        assert response.status_code == 413
        assert "3000x3000 = 9000000 pixels, over the limit of 4096" in response.json()["detail"]
        response = client.post("/runs", files={"mask_image": ("bomb.png", bomb, "image/png")})
        assert response.status_code == 413
    for side in (2000, 30_000):  # under and over PIL's own limit
        with pytest.raises(ValueError, match="over the limit of 1000000"):
            decode_image(_bomb(side), "image", max_bytes=10**9, max_pixels=10**6)


def test_request_and_image_byte_limits(pipe):
    limits = Limits(max_request_bytes=20_000, max_image_bytes=2_000)
    with TestClient(create_app(pipe, ServeOptions(limits=limits))) as client:
        response = client.post("/runs", json={"digits": "1" * 30_000})
        assert response.status_code == 413
        assert "over the limit of 20000 bytes" in response.json()["detail"]
        noise = base64.b64decode(_png(Image.frombytes("L", (64, 64), os.urandom(64 * 64))))
        assert len(noise) > 2_000
        response = client.post("/runs", json={"image": base64.b64encode(noise).decode()})
        assert response.status_code == 413
        response = client.post("/runs", files={"image": ("noise.png", noise, "image/png")})
        assert response.status_code == 413
        assert "over the limit of 2000" in response.json()["detail"]


def test_a_full_queue_answers_503(pipe):
    options = ServeOptions(concurrency=1, max_queue=1, cache=False)
    with TestClient(create_app(pipe, options)) as client:
        long = {"digits": "1", "num_inference_steps": 1000}
        first = client.post("/runs", json=long).json()["id"]
        second = client.post("/runs", json=long).json()["id"]
        refused = client.post("/runs", json=long)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "the server is busy" in refused.json()["detail"]
        for run_id in (second, first):
            client.delete(f"/runs/{run_id}")
        assert _wait(client, first)["status"] == "cancelled"
        assert (
            client.post("/runs", json={"digits": "1", "num_inference_steps": 1}).status_code == 202
        )


# -- cancellation -------------------------------------------------------------------------------


def test_delete_cancels_a_running_run_between_steps(pipe):
    with TestClient(create_app(pipe, ServeOptions(cache=False))) as client:
        run_id = client.post("/runs", json={"digits": "5", "num_inference_steps": 1000}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120
        while client.get(f"/runs/{run_id}").json()["progress"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.delete(f"/runs/{run_id}").status_code == 200
        record = _wait(client, run_id)
        assert record["status"] == "cancelled"
        assert record["error"]["type"] == "CancelledError"
        assert record["progress"]["index"] < 1000
        assert record["result"] is None


def test_delete_cancels_a_queued_run_at_once(pipe):
    with TestClient(create_app(pipe, ServeOptions(concurrency=1, cache=False))) as client:
        running = client.post("/runs", json={"digits": "5", "num_inference_steps": 1000}).json()
        queued = client.post("/runs", json={"digits": "6", "num_inference_steps": 1}).json()
        assert queued["status"] == "queued"
        assert client.delete(f"/runs/{queued['id']}").json()["status"] == "cancelled"
        client.delete(f"/runs/{running['id']}")
        assert _wait(client, running["id"])["status"] == "cancelled"


# -- step-level batching ------------------------------------------------------------------------


def test_batching_joins_the_steps_of_the_runs_in_flight(pipe):
    batcher = mb.StepBatcher()
    options = ServeOptions(concurrency=4, cache=False, batching=batcher)
    requests = [("1", 0), ("23", 1), ("4", 2)]
    with TestClient(create_app(pipe, options)) as client:
        long = client.post("/runs", json={"digits": "5", "num_inference_steps": 1000}).json()
        failing = client.post("/runs", json={"digits": "4a", "num_inference_steps": 20}).json()
        ids = [
            client.post("/runs", json={"digits": d, "seed": s, "num_inference_steps": 8}).json()[
                "id"
            ]
            for d, s in requests
        ]
        records = [_wait(client, run_id) for run_id in ids]
        assert _wait(client, failing["id"])["status"] == "failed"
        assert client.get(f"/runs/{long['id']}").json()["status"] == "running"
        client.delete(f"/runs/{long['id']}")  # it leaves the batch at its next step
        assert _wait(client, long["id"])["status"] == "cancelled"
    for record, (digits, seed) in zip(records, requests, strict=True):
        assert record["status"] == "succeeded"
        images = record["result"]["outputs"]["images"]
        assert _same_images(images, _expected(pipe, digits, seed, steps=8), batched=True)
    assert batcher.stats.largest >= 2  # the long run's steps carried the others'
    assert batcher.stats.fallbacks == 0


def test_the_command_line_turns_batching_on():
    batching = serve_options(["m:p", "--batching", "--batch-wait", "20", "--batch-parallel", "2"])
    assert batching.concurrency == 8  # room for runs to batch
    assert isinstance(batching.batching, mb.StepBatcher)
    assert (batching.batching.max_wait, batching.batching.parallel) == (0.02, 2)
    plain = serve_options(["m:p", "--concurrency", "3"])
    assert (plain.concurrency, plain.batching) == (3, False)


# -- auth ------------------------------------------------------------------------------------


def test_a_token_guards_the_runs_but_not_the_page(pipe):
    with TestClient(create_app(pipe, ServeOptions(token=TOKEN))) as client:
        inputs = {"digits": "1", "num_inference_steps": 1, "seed": 0}
        assert client.post("/runs", json=inputs).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/runs", json=inputs, headers=wrong).status_code == 401
        assert client.get("/runs/x", headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        run = client.post("/runs?wait=true", json=inputs, headers=right)
        assert run.json()["status"] == "succeeded"
        assert client.get(f"/runs/{run.json()['id']}").status_code == 401
        assert client.get(f"/runs/{run.json()['id']}", headers=right).status_code == 200
        page = client.get("/")
        assert page.status_code == 200
        assert 'id="token"' in page.text or "id='token'" in page.text


# -- the page ------------------------------------------------------------------------------------


def test_the_page_has_a_form_made_from_the_signatures_and_the_diagram(client):
    page = client.get("/").text
    assert 'name="digits"' in page
    assert 'type="number"' in page
    assert 'max="1000"' in page  # num_inference_steps's range
    assert 'name="seed"' in page
    assert 'name="image"' in page
    assert 'name="mask_image"' in page
    assert "flowchart LR" in page
    assert "http://" not in page.replace('xmlns="http://', "")  # nothing from elsewhere
    assert "https://" not in page
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../_app.py").status_code == 404


# -- the command line ------------------------------------------------------------------------


def test_load_pipeline_takes_a_pipeline_a_node_or_a_factory():
    assert isinstance(load_target("modblocks.demo:load_pipeline"), mb.Pipeline)
    from modblocks.demo import digits

    with pytest.raises(mb.MissingInputError):  # a node without its components
        load_target("modblocks.demo:digits")
    assert digits.name == "digits"
    with pytest.raises(mb.ModblocksError, match="module:name"):
        load_target("modblocks.demo")
    with pytest.raises(mb.ModblocksError, match=r"not an `mb\.Pipeline`"):
        load_target("modblocks.demo:MODEL_PATH")


def test_the_modblocks_command_explains_its_usage():
    done = subprocess.run(
        [sys.executable, "-m", "modblocks", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--token" in done.stdout
    assert "127.0.0.1" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "modblocks", "nope"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage: modblocks serve" in done.stderr


# -- a bounded load test -------------------------------------------------------------------------


@pytest.mark.parametrize("batching", [False, True], ids=["threads", "batching"])
def test_load_200_requests_with_cancels_and_malformed_ones_lose_nothing(pipe, batching):
    """200 requests: 10 % cancelled, 5 % malformed; every run ends, each with its own result."""
    combos = [(str(d), seed) for d in range(10) for seed in (0, 1)]
    expected = {combo: _expected(pipe, *combo, steps=1) for combo in combos}
    concurrency = 8 if batching else 2
    options = ServeOptions(concurrency=concurrency, max_queue=256, keep=64, batching=batching)
    process = psutil.Process()
    with TestClient(create_app(pipe, options)) as client:
        rss: list[int] = []
        submitted: dict[str, tuple[tuple[str, int], bool]] = {}
        refused = 0
        for round_ in range(4):
            ids: list[str] = []
            for i in range(50):
                n = round_ * 50 + i
                if n % 20 == 7:  # 5 % malformed
                    bad = {"digits": 3} if n % 40 == 7 else {"num_inference_steps": "x"}
                    response = client.post("/runs", json=bad)
                    assert response.status_code == 422
                    refused += 1
                    continue
                combo = combos[n % len(combos)]
                body = {"digits": combo[0], "seed": combo[1], "num_inference_steps": 1}
                run_id = client.post("/runs", json=body).json()["id"]
                cancel = n % 10 == 3  # 10 % cancelled
                if cancel:
                    client.delete(f"/runs/{run_id}")
                submitted[run_id] = (combo, cancel)
                ids.append(run_id)
            records = {run_id: _wait(client, run_id) for run_id in ids}
            for run_id, record in records.items():
                combo, cancelled = submitted[run_id]
                if cancelled:
                    assert record["status"] in ("cancelled", "succeeded"), record
                if record["status"] == "succeeded":
                    assert record["id"] == run_id
                    images = record["result"]["outputs"]["images"]
                    assert _same_images(images, expected[combo], batching), run_id
                else:
                    assert cancelled, record  # only cancelled runs end otherwise
            gc.collect()
            rss.append(process.memory_info().rss)
        stats = client.get("/health").json()["runs"]
        assert stats["queued"] == stats["running"] == 0  # nothing stuck
        assert refused == 10
        assert len(submitted) == 190
        cancelled_runs = sum(1 for _, c in submitted.values() if c)
        assert cancelled_runs == 20
        runs = client.app.state.runs  # type: ignore[attr-defined]
        assert len(runs._runs) <= options.keep  # finished runs expire
        assert all(run.job is None for run in runs._runs.values())  # inputs released
        assert all(len(run._messages) <= MAX_MESSAGES for run in runs._runs.values())
    growth = (rss[-1] - rss[1]) / 2**20
    assert growth < 64, f"memory grew by {growth:.0f} MB over 100 requests: {rss}"


def test_python_m_modblocks_serve_starts_a_server_on_localhost(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "modblocks.serve", "modblocks.demo:load_pipeline"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*command, "--port", str(port), "--token", TOKEN, "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health.json()["ok"] is True
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"digits": "9", "num_inference_steps": 1, "seed": 0}
        run = httpx.post(f"{url}/runs?wait=true", json=body, headers=auth, timeout=120).json()
        assert run["status"] == "succeeded"
        assert httpx.post(f"{url}/runs", json=body, timeout=30).status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
