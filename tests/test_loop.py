"""`mb.loop`: a body run once per element (the denoising loop), callbacks, progress, cancel."""

import io
import pickle
import threading
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modblocks as mb
from modblocks.exceptions import BlockError, CancelledError, MissingInputError, WiringError
from tests.strategies import build_block, chains, inputs_for

# Random chains give one input different defaults on purpose: the reference model covers it.
pytestmark = pytest.mark.filterwarnings("ignore::modblocks.DefaultsWarning")


@mb.block(output="latents")
def step(latents: int, t: int, i: int) -> int:
    """One denoising step."""
    return latents * 10 + t


@mb.block(output="latents")
def prepare(seed: int) -> int:
    """Make the first latents."""
    return seed


@mb.block(output="decoded")
def decode(latents: int) -> str:
    """Decode the latents."""
    return str(latents)


denoise = mb.loop(step, over="timesteps", name="denoise")


def test_loop_runs_body_per_element():
    final = denoise.run(latents=0, timesteps=[1, 2, 3])
    assert final["latents"] == 123
    assert isinstance(denoise, mb.Loop)


def test_loop_index_and_item_are_not_left_in_state():
    final = denoise.run(latents=0, timesteps=[1, 2, 3])
    assert dict(final) == {"latents": 123, "timesteps": [1, 2, 3]}
    assert "i" not in final
    assert "t" not in final


def test_loop_keeps_values_named_like_index_given_by_caller():
    """`i` and `t` exist only inside the loop; a caller's own `i` is there again after it."""
    seq = prepare >> denoise
    final = seq.run(mb.State(i="outer i"), seed=0, timesteps=[4])
    assert final["i"] == "outer i"
    assert final["latents"] == 4


def test_loop_index_and_item_names():
    seen = []

    @mb.block(output="acc")
    def collect(acc: list, k: int, sigma: float) -> list:
        seen.append((k, sigma))
        return [*acc, sigma]

    lp = mb.loop(collect, over="sigmas", index="k", item="sigma")
    final = lp.run(acc=[], sigmas=[0.5, 0.25])
    assert seen == [(0, 0.5), (1, 0.25)]
    assert final["acc"] == [0.5, 0.25]
    assert [s.name for s in lp.inputs] == ["sigmas", "acc"]


def test_loop_without_index_or_item():
    @mb.block(output="n")
    def count(n: int) -> int:
        return n + 1

    lp = mb.loop(count, over="things", index=None, item=None)
    assert lp.run(n=0, things="abc")["n"] == 3


def test_loop_over_empty_leaves_state():
    final = denoise.run(latents=5, timesteps=[])
    assert dict(final) == {"latents": 5, "timesteps": []}


def test_loop_over_tensor_elements():
    @mb.block(output="total")
    def add(total: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return total + t

    lp = mb.loop(add, over="timesteps")
    final = lp.run(total=torch.tensor(0), timesteps=torch.tensor([1, 2, 3]))
    assert final["total"].item() == 6


def test_loop_over_value_produced_earlier_is_not_an_input():
    @mb.block(output="timesteps")
    def set_timesteps(num_inference_steps: int) -> list:
        return list(range(1, num_inference_steps + 1))

    seq = set_timesteps >> denoise
    assert [s.name for s in seq.inputs] == ["num_inference_steps", "latents"]
    assert seq.run(num_inference_steps=3, latents=0)["latents"] == 123


def test_loop_renamed():
    renamed = denoise.rename(latents="x", timesteps="ts")
    assert [s.name for s in renamed.inputs] == ["ts", "x"]
    assert [s.name for s in renamed.outputs] == ["x"]
    assert dict(renamed.run(x=0, ts=[1, 2])) == {"x": 12, "ts": [1, 2]}


def test_loop_inputs_and_outputs():
    assert [(s.name, s.required) for s in denoise.inputs] == [
        ("timesteps", True),
        ("latents", True),
    ]
    assert [s.name for s in denoise.outputs] == ["latents"]
    with pytest.raises(MissingInputError) as info:
        denoise.run(latents=1)
    assert info.value.names == ("timesteps",)


def test_loop_carries_values_between_steps():
    class Out(NamedTuple):
        latents: int
        history: tuple

    @mb.block
    def body(latents: int, t: int, history: tuple = ()) -> Out:
        return Out(latents + t, (*history, latents))

    final = mb.loop(body, over="timesteps").run(latents=0, timesteps=[1, 2, 3])
    assert final["latents"] == 6
    assert final["history"] == (0, 1, 3)


def test_loop_body_sequence_with_nested_switch():
    @mb.block(output="noise")
    def predict(latents: int, t: int) -> int:
        return latents + t

    @mb.block(output="noise")
    def guide(noise: int, guidance: float) -> int:
        return int(noise * guidance)

    @mb.block(output="latents")
    def update(latents: int, noise: int) -> int:
        return latents + noise

    body = predict >> mb.switch({"guidance": guide}, name="cfg") >> update
    lp = mb.loop(body, over="timesteps", name="denoise")
    plain = lp.run(latents=1, timesteps=[1, 1])["latents"]
    guided = lp.run(latents=1, timesteps=[1, 1], guidance=2.0)["latents"]
    # by hand: plain: l=1 → noise 2 → 3 → noise 4 → 7 ; guided: noise 4 → 5 → noise 12 → 17
    assert (plain, guided) == (7, 17)


def test_loop_body_can_be_a_loop():
    @mb.block(output="total")
    def add(total: int, row_item: int) -> int:
        return total + row_item

    inner = mb.loop(add, over="row", index=None, item="row_item", name="inner")

    @mb.block(output="row")
    def pick(t: list) -> list:
        return t

    outer = mb.loop(pick >> inner, over="rows", index=None, name="outer")
    assert outer.run(total=0, rows=[[1, 2], [3]])["total"] == 6


def test_loop_rejects_body_writing_index():
    @mb.block(output="i")
    def writes_i(t: int) -> int:
        return t

    with pytest.raises(WiringError, match=r"`i`"):
        mb.loop(writes_i, over="timesteps")


def test_loop_rejects_non_node_body():
    with pytest.raises(WiringError):
        mb.loop(len, over="timesteps")  # type: ignore[arg-type]


@given(chains(max_size=4, read_only=("i", "t")), st.integers(0, 4), st.data())
def test_loop_equals_hand_chained_runs_of_the_body(specs, n, data):
    body = mb.Sequential([build_block(s) for s in specs])
    lp = mb.loop(body, over="items")
    given_inputs = {k: v for k, v in data.draw(inputs_for(specs)).items() if k not in {"i", "t"}}
    items = data.draw(st.lists(st.integers(-9, 9), min_size=n, max_size=n))
    required_loop_inputs = {s.name for s in lp.inputs if s.required} - {"items"}
    given_inputs.update(dict.fromkeys(required_loop_inputs - set(given_inputs), 0))
    final = lp.run(items=items, **given_inputs)
    state = mb.State(given_inputs, items=items)
    for k, item in enumerate(items):
        after = body.run(state.evolve(i=k, t=item))
        state = mb.State({key: v for key, v in after.items() if key not in {"i", "t"}})
    assert dict(final) == dict(state)


# -- on_step ----------------------------------------------------------------------------------


def test_loop_on_step_sees_each_step():
    seen = []

    def record(s: mb.Step) -> None:
        seen.append((s.path, s.index, s.item, s.total, dict(s.state)))

    pipe = (prepare >> denoise >> decode).named("outer")
    final = pipe.run(seed=1, timesteps=[1, 2], on_step=record)
    assert final["decoded"] == "112"
    assert seen == [
        ("outer > denoise", 0, 1, 2, {"seed": 1, "timesteps": [1, 2], "latents": 11}),
        ("outer > denoise", 1, 2, 2, {"seed": 1, "timesteps": [1, 2], "latents": 112}),
    ]


def test_loop_on_step_state_is_a_frozen_state():
    states = []
    denoise.run(latents=0, timesteps=[1, 2], on_step=lambda s: states.append(s.state))
    assert all(isinstance(s, mb.State) for s in states)
    assert [s["latents"] for s in states] == [1, 12]  # each one unchanged by later steps


def test_loop_on_step_returning_mapping_applies_changes():
    def bump(s: mb.Step) -> dict[str, Any] | None:
        return {"latents": 0} if s.index == 0 else None

    final = denoise.run(latents=5, timesteps=[1, 2], on_step=bump)
    assert final["latents"] == 2


def test_loop_on_step_changes_seen_by_later_callbacks():
    seen = []

    def first(s: mb.Step) -> dict[str, Any]:
        return {"latents": 100}

    def second(s: mb.Step) -> None:
        seen.append(s.state["latents"])

    lp = mb.loop(step, over="timesteps", on_step=first)
    lp.run(latents=0, timesteps=[1], on_step=second)
    assert seen == [100]


def test_loop_step_stop_ends_loop_and_later_blocks_run():
    def stop_after_first(s: mb.Step) -> None:
        if s.index == 0:
            s.stop()

    pipe = prepare >> denoise >> decode
    final = pipe.run(seed=1, timesteps=[1, 2, 3], on_step=stop_after_first)
    assert final["latents"] == 11
    assert final["decoded"] == "11"


def test_loop_own_on_step_runs_before_run_wide_and_only_for_its_loop():
    calls = []
    inner = mb.loop(
        step, over="timesteps", name="inner", on_step=lambda s: calls.append(("own", s.index))
    )
    other = mb.loop(step, over="more", name="other")
    pipe = inner >> other
    pipe.run(latents=0, timesteps=[1], more=[5], on_step=lambda s: calls.append((s.path, s.index)))
    assert calls == [("own", 0), ("inner", 0), ("other", 0)]


def test_loop_on_step_error_is_a_block_error():
    def broken(s: mb.Step) -> None:
        raise KeyError("cb")

    with pytest.raises(BlockError) as info:
        denoise.run(latents=0, timesteps=[1, 2], on_step=broken)
    assert isinstance(info.value.__cause__, KeyError)
    assert "step 0" in info.value.path


# -- errors in loops --------------------------------------------------------------------------


def _failing_at(k: int, times: int = 1):
    """A body step that raises at step *k* the first *times* times it gets there."""
    failures = []

    @mb.block(output="latents")
    def unet(latents: int, t: int, i: int) -> int:
        if i == k and len(failures) < times:
            failures.append(i)
            raise ValueError(f"failed at {i}")
        return latents * 10 + t

    return unet


def test_loop_error_path_and_state_as_of_last_completed_step():
    lp = mb.loop(_failing_at(2), over="timesteps", name="denoise")
    pipe = (prepare >> lp >> decode).named("outer")
    with pytest.raises(BlockError, match=r"failed at 2") as info:
        pipe.run(seed=1, timesteps=[1, 2, 3, 4])
    err = info.value
    assert err.path == "outer > denoise[step 2] > unet"
    assert isinstance(err.__cause__, ValueError)
    assert dict(err.state) == {"seed": 1, "timesteps": [1, 2, 3, 4], "latents": 112}


def test_loop_error_path_with_sequence_body():
    @mb.block(output="noise")
    def predict(latents: int, t: int, i: int) -> int:
        if i == 1:
            raise RuntimeError("nan")
        return t

    @mb.block(output="latents")
    def update(latents: int, noise: int) -> int:
        return latents + noise

    lp = mb.loop(predict >> update, over="timesteps", name="denoise")
    with pytest.raises(BlockError) as info:
        (prepare >> lp).named("text2img").run(seed=0, timesteps=[1, 2, 3])
    assert info.value.path == "text2img > denoise[step 1] > predict"
    # The state as of the last completed step: `noise` of step 0 is there, nothing of step 1.
    assert dict(info.value.state) == {"seed": 0, "timesteps": [1, 2, 3], "latents": 1, "noise": 1}


def test_loop_resume_at_failed_step_equals_uninterrupted_run():
    unet = _failing_at(2)
    lp = mb.loop(unet, over="timesteps", name="denoise")
    pipe = (prepare >> lp >> decode).named("outer")
    with pytest.raises(BlockError) as info:
        pipe.run(seed=1, timesteps=[1, 2, 3, 4])
    resumed = pipe.run(info.value.state, resume=info.value.path)
    expected = pipe.run(seed=1, timesteps=[1, 2, 3, 4])
    assert dict(resumed) == dict(expected)
    assert resumed["decoded"] == "11234"


def test_loop_resume_when_loop_is_the_root():
    lp = mb.loop(_failing_at(1) >> decode, over="timesteps", name="denoise")
    with pytest.raises(BlockError) as info:
        lp.run(latents=0, timesteps=[1, 2, 3])
    assert info.value.path == "denoise[step 1] > unet"
    resumed = lp.run(info.value.state, resume=info.value.path)
    assert dict(resumed) == dict(lp.run(latents=0, timesteps=[1, 2, 3]))


def test_loop_resume_by_name_and_step():
    pipe = (prepare >> denoise >> decode).named("outer")
    state = mb.State(seed=1, timesteps=[1, 2, 3], latents=11)
    assert pipe.run(state, resume="denoise[step 1]")["decoded"] == "1123"


# -- progress ---------------------------------------------------------------------------------


def _progress_text(lp: mb.Loop, **options: Any) -> str:
    buf = io.StringIO()
    with mb.progress(file=buf, **options):
        lp.run(latents=0, timesteps=list(range(3)))
    return buf.getvalue()


def test_loop_progress_true_writes_a_bar():
    lp = mb.loop(step, over="timesteps", name="denoise", progress=True)
    text = _progress_text(lp)
    assert "denoise" in text
    assert "/3" in text
    # The loop's own setting wins over the global one.
    assert "denoise" in _progress_text(lp, disable=True)


def test_loop_progress_false_writes_nothing():
    lp = mb.loop(step, over="timesteps", progress=False)
    assert _progress_text(lp, disable=False, min_steps=1) == ""


def test_loop_progress_follows_global_settings():
    lp = mb.loop(step, over="timesteps", name="denoise")
    assert "denoise" in _progress_text(lp, disable=False, min_steps=1)
    assert _progress_text(lp, disable=False, min_steps=10) == ""  # too short for a bar
    assert _progress_text(lp, disable=True, min_steps=1) == ""


def test_loop_progress_mapping_passes_options():
    lp = mb.loop(step, over="timesteps", progress={"desc": "custom", "disable": False})
    assert "custom" in _progress_text(lp)


def test_progress_context_manager_restores_settings():
    lp = mb.loop(step, over="timesteps", name="denoise")
    with mb.progress(disable=True):
        assert _progress_text(lp, min_steps=1) == ""
    # After the block the settings are back; a bar shows again when asked for.
    assert "denoise" in _progress_text(lp, disable=False, min_steps=1)


def test_progress_as_a_call():
    lp = mb.loop(step, over="timesteps", name="denoise")
    buf = io.StringIO()
    with mb.progress():  # only to put the global settings back when the test ends
        mb.progress(disable=True, file=buf, min_steps=1)
        lp.run(latents=0, timesteps=[1, 2, 3])
        assert buf.getvalue() == ""
        mb.progress(disable=False)
        lp.run(latents=0, timesteps=[1, 2, 3])
        assert "denoise" in buf.getvalue()


def test_progress_as_a_decorator():
    lp = mb.loop(step, over="timesteps", name="denoise")
    buf = io.StringIO()

    @mb.progress(disable=False, file=buf, min_steps=1)
    def run() -> mb.State:
        return lp.run(latents=0, timesteps=[1])

    assert run()["latents"] == 1
    assert "denoise" in buf.getvalue()


# -- cancellation -----------------------------------------------------------------------------


def test_loop_cancel_token_between_steps():
    token = mb.CancelToken()

    def cancel_after_second(s: mb.Step) -> None:
        if s.index == 1:
            token.cancel()

    pipe = (prepare >> denoise >> decode).named("outer")
    with pytest.raises(CancelledError) as info:
        pipe.run(seed=1, timesteps=[1, 2, 3, 4], on_step=cancel_after_second, cancel=token)
    err = info.value
    assert isinstance(err, mb.ModblocksError)
    assert dict(err.state) == {"seed": 1, "timesteps": [1, 2, 3, 4], "latents": 112}
    assert "denoise" in err.path
    assert token.cancelled


def test_cancel_token_from_another_thread():
    token = mb.CancelToken()
    started = threading.Event()
    release = threading.Event()

    @mb.block(output="latents")
    def slow(latents: int, t: int) -> int:
        started.set()
        release.wait(5)
        return latents + t

    lp = mb.loop(slow, over="timesteps")
    result: list[Any] = []

    def target() -> None:
        try:
            lp.run(latents=0, timesteps=list(range(100)), cancel=token)
        except CancelledError as err:
            result.append(err)

    worker = threading.Thread(target=target)
    worker.start()
    assert started.wait(5)
    token.cancel()
    release.set()
    worker.join(5)
    assert not worker.is_alive()
    (err,) = result
    assert err.state["latents"] < sum(range(100))


def test_cancel_token_already_cancelled_runs_nothing():
    token = mb.CancelToken()
    token.cancel()
    calls = []

    @mb.block(output="y")
    def f(x: int) -> int:
        calls.append(x)
        return x

    with pytest.raises(CancelledError):
        (f >> f).run(x=1, cancel=token)
    assert calls == []


def test_loop_pickles_by_value():
    lp = mb.loop(step, over="timesteps", name="denoise")
    clone = pickle.loads(pickle.dumps(lp))
    assert clone is not lp
    assert clone.run(latents=0, timesteps=[1, 2])["latents"] == 12


def test_step_states_handed_to_callbacks_never_change():
    @mb.block(output="x")
    def add(x: int, t: int) -> int:
        return x + t

    kept: list[tuple[mb.State, dict[str, Any]]] = []

    def on_step(step: mb.Step) -> dict[str, int]:
        kept.append((step.state, dict(step.state)))
        return {"x": 1000}

    final = mb.loop(add, over="ts", progress=False).run(x=0, ts=[1, 2], on_step=on_step)
    assert final["x"] == 1000
    for state, seen in kept:
        assert dict(state) == seen  # the state the callback got is the state it keeps


def test_callbacks_after_one_that_changes_values_see_a_new_state():
    @mb.block(output="x")
    def add(x: int, t: int) -> int:
        return x + t

    first: list[mb.State] = []
    second: list[mb.State] = []

    def change(step: mb.Step) -> dict[str, int]:
        first.append(step.state)
        return {"x": -1}

    lp = mb.loop(add, over="ts", progress=False, on_step=change)
    lp.run(x=0, ts=[5], on_step=lambda s: second.append(s.state))
    assert first[0]["x"] == 5
    assert second[0]["x"] == -1
    assert first[0] is not second[0]


def test_loop_errors_are_named_before_the_body_runs():
    @mb.block(output="y")
    def inc(y: int) -> int:
        return y + 1

    lp = mb.loop(inc, over="ts", item=None, progress=False, name="lp")
    for bad in (5, None, (i for i in range(3))):
        with pytest.raises(mb.InputTypeError, match="sized collection") as info:
            lp.run(ts=bad, y=0)
        assert isinstance(info.value, TypeError)
        assert info.value.state["y"] == 0
    with pytest.raises(mb.WiringError, match="`over` names the state value"):
        mb.loop(inc, over=None)  # type: ignore[arg-type]
    with pytest.raises(mb.WiringError, match="both `k`"):
        mb.loop(inc, over="ts", index="k", item="k")


def test_missing_input_of_a_loop_body_hints_at_the_names_the_loop_gives():
    @mb.block(output="latents")
    def step(latents: int, timestep: int) -> int:
        return latents + timestep

    lp = mb.loop(step, over="timesteps", name="denoise", progress=False)
    with pytest.raises(mb.MissingInputError, match="missing required input `timestep`") as info:
        lp.run(latents=0, timesteps=[1, 2])
    message = str(info.value)
    assert "gives its body `i` (the step number) and `t` (the element)" in message
    assert "item='timestep'" in message
    # The hint reaches loops nested in sequences too.
    with pytest.raises(mb.MissingInputError, match="gives its body"):
        (mb.block(lambda: 0, name="zero", output="latents") >> lp).run(timesteps=[1])
