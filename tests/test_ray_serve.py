"""`modblocks.ray.serve`: the served app on a local Ray Serve cluster, 2 pipeline replicas."""

from __future__ import annotations

import base64
import io
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'modblocks[ray-serve]'")
ray_serve = pytest.importorskip(
    "ray.serve", reason="Ray Serve is missing: pip install 'ray[serve]'"
)

import modblocks.ray as mb_ray  # noqa: E402
from modblocks.demo import load_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=False,
    )
    try:
        port = _free_port()
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
        mb_ray.serve(load_pipeline(), num_replicas=2, name="digits")
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.shutdown()
        ray.shutdown()


def _png(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.slow
def test_runs_spread_over_two_replicas_and_match_direct_runs(base_url):
    pipe = load_pipeline()
    inputs = [{"digits": str(d), "num_inference_steps": 5, "seed": d} for d in range(6)]

    def post(body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{base_url}/runs?wait=true", json=body, timeout=300)
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record

    with ThreadPoolExecutor(6) as pool:
        records = list(pool.map(post, inputs))
    for body, record in zip(inputs, records, strict=True):
        assert record["status"] == "succeeded", record["error"]
        expected = pipe(
            digits=body["digits"],
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(body["seed"]),
            output="images",
        )
        assert record["result"]["outputs"]["images"] == [_png(expected[0])]
    workers = {record["result"]["worker"] for record in records}
    assert len(workers) == 2, workers  # both replicas ran some


@pytest.mark.slow
def test_the_api_page_errors_and_cancel_work_through_ray_serve(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        assert "flowchart LR" in client.get("/").text
        bad = client.post("/runs", json={"digitz": "1"})
        assert bad.status_code == 422
        assert "Did you mean `digits`?" in bad.json()["detail"]
        failed = client.post("/runs?wait=true", json={"digits": "x", "num_inference_steps": 1})
        assert failed.json()["error"]["type"] == "BlockError"  # the replica's error, as it was
        run_id = client.post("/runs", json={"digits": "7", "num_inference_steps": 1000}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120
        while client.get(f"/runs/{run_id}").json()["progress"] is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        client.delete(f"/runs/{run_id}")
        while (record := client.get(f"/runs/{run_id}").json())["status"] == "running":
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.05)
        assert record["status"] == "cancelled"
        assert record["progress"]["index"] < 1000
        # The replica is free again: a new run goes through.
        again = client.post("/runs?wait=true", json={"digits": "1", "num_inference_steps": 2})
        assert again.json()["status"] == "succeeded"
