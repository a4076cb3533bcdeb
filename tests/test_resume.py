"""Resume is exact everywhere: from any failure or cancel, once or twice, cached or not.

A random tree of sequences, named sub-sequences, switches, loops and adapters runs once
uninterrupted; then with a failure injected at a random block call (so at a random loop step
too), and is resumed from the error with ``resume=err.path``. The resumed run must end in the
same state, also when resumed twice from the same error, after a cancel, with a `Cache`, and
through `Pipeline`. Some blocks draw from a torch generator, which the run advances in place:
a resumed run must not advance the one held in ``err.state``.
"""

from __future__ import annotations

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
