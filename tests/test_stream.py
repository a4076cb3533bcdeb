"""`node.stream()`: a State after each loop step, then the final one."""

import threading
import time

import pytest
import torch

import modblocks as mb
from modblocks.exceptions import BlockError, MissingInputError


def _pipe(calls: list[int] | None = None):
    @mb.block(output="latents")
    def prepare(seed: int) -> int:
        return seed

    @mb.block(output="latents")
    def step(latents: int, t: int, i: int) -> int:
        if calls is not None:
            calls.append(i)
        return latents * 10 + t

    @mb.block(output="image")
    def decode(latents: int) -> str:
        return f"<{latents}>"

    return (prepare >> mb.loop(step, over="timesteps", name="denoise") >> decode).named("pipe")


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "modblocks-stream" and t.is_alive()]


def test_stream_yields_state_per_step_then_final():
    states = list(_pipe().stream(seed=1, timesteps=[1, 2, 3]))
    assert len(states) == 4
    assert all(isinstance(s, mb.State) for s in states)
    assert [s["latents"] for s in states[:3]] == [11, 112, 1123]
    assert "image" not in states[0]
    assert "i" not in states[0]
    assert "t" not in states[0]
    assert states[-1]["image"] == "<1123>"


def test_stream_final_equals_run():
    pipe = _pipe()
    *_, final = pipe.stream(seed=2, timesteps=[4, 5])
    assert dict(final) == dict(pipe.run(seed=2, timesteps=[4, 5]))
    assert list(final) == list(pipe.run(seed=2, timesteps=[4, 5]))


def test_stream_without_loop_yields_only_final():
    @mb.block(output="y")
    def f(x: int) -> int:
        return x + 1

    states = list((f >> f).stream(x=1))
    assert len(states) == 1
    assert dict(states[0]) == {"x": 1, "y": 2}


def test_stream_with_state():
    states = list(_pipe().stream(mb.State(seed=0, extra="kept"), timesteps=[1]))
    assert states[-1]["extra"] == "kept"
    assert states[0]["extra"] == "kept"


def test_stream_states_of_renamed_loop_are_states_of_the_run():
    """A step's state is the run's state: outer names, and values the loop doesn't read."""

    @mb.block(output="x")
    def prepare(seed: int) -> int:
        return seed

    @mb.block(output="latents")
    def step(latents: int, t: int) -> int:
        return latents * 10 + t

    lp = mb.loop(step, over="timesteps").rename(latents="x", timesteps="ts")
    states = list((prepare >> lp).stream(seed=1, ts=[1, 2]))
    assert [dict(s) for s in states] == [
        {"seed": 1, "ts": [1, 2], "x": 11},
        {"seed": 1, "ts": [1, 2], "x": 112},
        {"seed": 1, "ts": [1, 2], "x": 112},
    ]


def test_stream_is_lazy():
    calls: list[int] = []
    stream = _pipe(calls).stream(seed=1, timesteps=[1, 2, 3, 4])
    first = next(stream)
    assert first["latents"] == 11
    time.sleep(0.05)
    assert calls == [0]  # no run-ahead: the next step waits for the consumer
    stream.close()


def test_stream_closed_early_stops_the_run():
    calls: list[int] = []
    stream = _pipe(calls).stream(seed=1, timesteps=list(range(50)))
    next(stream)
    next(stream)
    stream.close()
    assert _stream_threads() == []
    assert len(calls) == 2


def test_stream_abandoned_in_for_loop_stops_the_run():
    calls: list[int] = []
    for state in _pipe(calls).stream(seed=1, timesteps=list(range(50))):
        if state["latents"] > 1000:
            break
    # Leaving the for loop drops the generator, which closes it and ends the run:
    # latents are 10, 101, 1012 after three steps, and no fourth step runs.
    assert len(calls) == 3
    assert _stream_threads() == []


def test_stream_errors_propagate():
    @mb.block(output="latents")
    def bad(latents: int, i: int) -> int:
        if i == 1:
            raise ValueError("step failed")
        return latents + 1

    lp = mb.loop(bad, over="timesteps", name="denoise")
    stream = lp.stream(latents=0, timesteps=[0, 0, 0])
    assert next(stream)["latents"] == 1
    with pytest.raises(BlockError) as info:
        next(stream)
    assert info.value.path.startswith("denoise[step 1]")
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.state["latents"] == 1
    assert _stream_threads() == []


def test_stream_input_errors_propagate():
    with pytest.raises(MissingInputError):
        list(_pipe().stream(seed=1))


def test_stream_states_are_independent_snapshots():
    states = list(_pipe().stream(seed=1, timesteps=[1, 2]))
    assert states[0]["latents"] == 11  # not changed by the later steps
    assert states[0] is not states[1]


def test_stream_keeps_torch_inference_mode():
    modes = []

    @mb.block(output="x")
    def probe(x: torch.Tensor, t: int) -> torch.Tensor:
        modes.append(torch.is_inference_mode_enabled())
        return x + t

    lp = mb.loop(probe, over="timesteps")
    with torch.inference_mode():
        *_, final = lp.stream(x=torch.zeros(1), timesteps=[1, 2])
    assert modes == [True, True]
    assert final["x"].item() == 3
