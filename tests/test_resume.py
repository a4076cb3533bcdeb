"""Resume is exact everywhere: from any failure or cancel, once or twice, cached or not.

A random tree of sequences, named sub-sequences, switches, loops and adapters runs once
uninterrupted; then with a failure injected at a random block call (so at a random loop step
too), and is resumed from the error with ``resume=err.path``. The resumed run must end in the
same state, also when resumed twice from the same error, after a cancel, with a `Cache`, and
through `Pipeline`. Some blocks draw from a torch generator, which the run advances in place:
a resumed run must not advance the one held in ``err.state``.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import modblocks as mb
from tests.strategies import INJECTOR, nested_nodes

pytestmark = pytest.mark.filterwarnings("ignore::modblocks.DefaultsWarning")


def _inputs(flag: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"ts": [5, 7], "rng": torch.Generator().manual_seed(3)}
    if flag:
        values["flag"] = 1
    return values


def _plain(state: mb.State) -> dict[str, Any]:
    """A state with its generator replaced by the generator's state, to compare by value."""
    return {
        k: v.get_state().tolist() if isinstance(v, torch.Generator) else v for k, v in state.items()
    }


def _accepted(node: mb.Node, values: dict[str, Any]) -> dict[str, Any]:
    accepted = {s.name for s in node.inputs}
    return {k: v for k, v in values.items() if k in accepted}


def _uninterrupted(node: mb.Node, flag: bool) -> tuple[dict[str, Any], int]:
    INJECTOR.reset()
    final = node.run(**_accepted(node, _inputs(flag)))
    return _plain(final), INJECTOR.calls


def _fail(node: mb.Node, flag: bool, at: int, **options: Any) -> mb.BlockError:
    INJECTOR.reset(fail_at=at)
    with pytest.raises(mb.BlockError) as info:
        node.run(**_accepted(node, _inputs(flag)), **options)
    INJECTOR.reset()
    return info.value


@given(nested_nodes(), st.booleans(), st.data())
def test_resume_after_a_failure_equals_the_uninterrupted_run(node, flag, data):
    expected, calls = _uninterrupted(node, flag)
    assume(calls > 0)
    err = _fail(node, flag, data.draw(st.integers(0, calls - 1)))
    assert err.path.segments, "a failure names where it happened"
    before = _plain(err.state)
    assert _plain(node.run(err.state, resume=err.path)) == expected
    # The error's state is untouched by the resumed run, so it resumes again, as well.
    assert _plain(err.state) == before
    assert _plain(node.run(err.state, resume=err.path)) == expected
    # `resume=` takes the path's text as well as the path.
    assert _plain(node.run(err.state, resume=str(err.path))) == expected


@given(nested_nodes(), st.booleans(), st.data())
def test_resume_with_a_cache_equals_the_uninterrupted_run(node, flag, data):
    expected, calls = _uninterrupted(node, flag)
    assume(calls > 0)
    cache = mb.Cache()
    err = _fail(node, flag, data.draw(st.integers(0, calls - 1)), cache=cache)
    assert _plain(node.run(err.state, resume=err.path, cache=cache)) == expected
    assert _plain(node.run(err.state, resume=err.path, cache=cache)) == expected
    # And a whole run served from that cache is the run.
    INJECTOR.reset()
    assert _plain(node.run(**_accepted(node, _inputs(flag)), cache=cache)) == expected


@given(nested_nodes(), st.booleans(), st.data())
def test_resume_after_a_cancel_equals_the_uninterrupted_run(node, flag, data):
    expected, calls = _uninterrupted(node, flag)
    assume(calls > 1)
    stop_after = data.draw(st.integers(1, calls - 1))
    token = mb.CancelToken()
    finished: list[mb.Event] = []

    def events(event: mb.Event) -> None:
        if event.kind == "finished":
            finished.append(event)
            if len(finished) == stop_after:
                token.cancel()

    INJECTOR.reset()
    cancelled: mb.CancelledError | None = None
    try:
        node.run(**_accepted(node, _inputs(flag)), cancel=token, events=events)
    except mb.CancelledError as err:
        cancelled = err
    if cancelled is None:  # cancelled after the last unit: nothing was left to stop
        assert INJECTOR.calls == calls
        return
    # Nothing after the cancel ran; the path names the first unit that did not.
    assert INJECTOR.calls == stop_after
    assert _plain(node.run(cancelled.state, resume=cancelled.path)) == expected
    assert _plain(node.run(cancelled.state, resume=cancelled.path)) == expected


@given(nested_nodes(), st.booleans(), st.data())
def test_resume_through_a_pipeline_equals_the_uninterrupted_run(node, flag, data):
    expected, calls = _uninterrupted(node, flag)
    assume(calls > 0)
    pipe = mb.Pipeline(node, inference_mode=False)
    INJECTOR.reset(fail_at=data.draw(st.integers(0, calls - 1)))
    with pytest.raises(mb.BlockError) as info:
        pipe.run(**_accepted(node, _inputs(flag)))
    INJECTOR.reset()
    err = info.value
    assert _plain(pipe.run(err.state, resume=err.path)) == expected
    assert _plain(pipe.run(err.state, resume=err.path)) == expected


# -- the reported cases ---------------------------------------------------------------------------


def _step_failing_at(fail: list[bool]) -> mb.Block[..., float]:
    @mb.block(output="x")
    def step(x: float, t: int) -> float:
        if fail[0] and t == 3:
            raise RuntimeError("boom")
        return x * 1.5 + t

    return step


@mb.block(output="y")
def other(x: float) -> float:
    return -1.0


def test_resume_through_and_on_a_switch_continues_the_loop_where_it_failed():
    fail = [False]
    top = mb.switch(
        {"flag": mb.loop(_step_failing_at(fail), over="ts", name="lp")}, default=other, name="sw"
    )
    inputs = {"x": 1.0, "ts": [0, 1, 2, 3, 4, 5], "flag": True}
    expected = top.run(**inputs)["x"]
    fail[0] = True
    with pytest.raises(mb.BlockError) as info:
        top.run(**inputs)
    fail[0] = False
    assert info.value.path == "sw > lp[step 3] > step"
    assert top.run(info.value.state, resume=info.value.path)["x"] == expected
    # The switch inside a sequence: the loop goes on from step 3, not from step 0.
    seq = mb.block(lambda n: n, name="pre", output="n") >> top
    fail[0] = True
    with pytest.raises(mb.BlockError) as info:
        seq.run(n=0, **inputs)
    fail[0] = False
    assert seq.run(info.value.state, resume=info.value.path)["x"] == expected
    # Resuming *on* the switch runs it whole, choosing again.
    assert seq.run(info.value.state.evolve(x=1.0), resume="sw")["x"] == expected


def test_cancel_path_names_the_first_step_not_run_and_resumes_from_there():
    @mb.block(output="x")
    def add(x: int, t: int) -> int:
        return x + t

    lp = mb.loop(add, over="ts", progress=False, name="lp")
    token = mb.CancelToken()

    def on_step(step: mb.Step) -> None:
        if step.index == 4:
            token.cancel()

    with pytest.raises(mb.CancelledError) as info:
        lp.run(x=0, ts=list(range(10)), cancel=token, on_step=on_step)
    err = info.value
    assert err.path == "lp[step 5]"
    assert err.path.segments == (mb.Segment("lp", 5),)
    assert err.state["x"] == 0 + 1 + 2 + 3 + 4
    assert lp.run(err.state, resume=err.path)["x"] == sum(range(10))


def test_resumed_loop_numbers_its_steps_on_and_its_bar_counts_from_there():
    seen: list[tuple[int, int]] = []
    events: list[mb.Event] = []

    @mb.block(output="x")
    def add(x: int, i: int) -> int:
        return x + i

    bar = io.StringIO()
    lp = mb.loop(add, over="ts", name="lp", progress={"file": bar, "ascii": True})
    final = lp.run(
        mb.State(x=0, ts=list(range(6))),
        resume="lp[step 4]",
        on_step=lambda s: seen.append((s.index, s.total)),
        events=events.append,
    )
    assert final["x"] == 4 + 5
    assert seen == [(4, 6), (5, 6)]
    assert [e.index for e in events if e.kind == "step"] == [4, 5]
    # The bar starts at the step the loop resumes at and ends full, not at 2 of 6.
    drawn = bar.getvalue()
    assert "4/6" in drawn
    assert "6/6" in drawn
    assert "2/6" not in drawn


def test_resume_rejects_paths_it_cannot_follow_before_running_anything():
    ran: list[str] = []

    @mb.block(output="y")
    def inc(y: int) -> int:
        ran.append("inc")
        return y + 1

    lp = mb.loop(inc, over="ts", item=None, progress=False, name="lp")
    with pytest.raises(mb.PathError, match="2 steps"):
        lp.run(mb.State(ts=[1, 2], y=0), resume="lp[step 99]")
    seq = inc >> inc
    with pytest.raises(mb.PathError, match="no sub-block `nope`") as info:
        seq.run(mb.State(y=0), resume="nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(mb.PathError, match="not a path") as info:
        seq.run(mb.State(y=0), resume="inc[step x]")
    assert isinstance(info.value, ValueError)
    with pytest.raises(mb.PathError, match="not a loop"):
        seq.run(mb.State(y=0), resume="inc[step 1]")
    assert ran == []
