"""Running nodes: input checks, errors with paths and states, resume, pickling, threads."""

import pickle
import threading
import time
from typing import Any, Literal, NamedTuple

import pytest
import torch

import modblocks as mb
from modblocks.exceptions import BlockError, MissingInputError, UnknownInputError


class Encoded(NamedTuple):
    embeds: int
    batch_size: int


@mb.block
def encode_prompt(prompt: str, num_images_per_prompt: int = 1) -> Encoded:
    """Encode the prompt."""
    return Encoded(len(prompt), num_images_per_prompt)


@mb.block(output="latents")
def prepare_latents(batch_size: int, height: int, width: int, seed: int | None = None) -> list:
    """Make starting latents."""
    return [batch_size, height, width, seed]


@mb.block(output="latents")
def denoise_step(latents: list, embeds: int, t: int) -> list:
    """One step."""
    return [*latents, embeds + t]


@mb.block(output="images")
def decode(latents: list) -> str:
    """Decode."""
    return "-".join(map(str, latents))


text2img = (
    encode_prompt
    >> prepare_latents
    >> mb.loop(denoise_step, over="timesteps", name="denoise")
    >> decode
).named("text2img")


@mb.block(output="y")
def module_double(x: int) -> int:
    return 2 * x


@mb.block(output="x")
def module_inc(y: int) -> int:
    return y + 1


def module_select(mode: str | None = None) -> str | None:
    return mode


# -- inputs -----------------------------------------------------------------------------------


def test_run_returns_state_with_inputs_and_outputs():
    final = text2img.run(prompt="cat", height=2, width=3, timesteps=[10, 20])
    assert isinstance(final, mb.State)
    assert final["images"] == "1-2-3-None-13-23"
    assert list(final) == [
        "prompt",
        "height",
        "width",
        "timesteps",
        "embeds",
        "batch_size",
        "latents",
        "images",
    ]


def test_run_on_any_node_kind():
    assert module_double.run(x=2)["y"] == 4
    assert (module_double >> module_inc).run(x=2)["x"] == 5
    assert mb.switch({"x": module_double}).run(x=3)["y"] == 6
    assert mb.loop(module_double >> module_inc, over="ts").run(x=0, ts=[0, 0])["x"] == 3


def test_run_with_state_and_inputs():
    start = mb.State(prompt="cat", height=2)
    final = text2img.run(start, width=3, timesteps=[])
    assert final["images"] == "1-2-3-None"
    # Inputs given as keywords override the state.
    final = text2img.run(start, prompt="a dog", width=1, timesteps=[])
    assert final["embeds"] == 5


def test_run_with_plain_mapping_as_state():
    final = module_double.run({"x": 4, "other": 1})
    assert dict(final) == {"x": 4, "other": 1, "y": 8}


def test_run_reports_all_missing_inputs_at_once():
    with pytest.raises(MissingInputError) as info:
        text2img.run(prompt="cat")
    err = info.value
    assert set(err.names) == {"height", "width", "timesteps"}
    assert err.node == "text2img"
    for name in ("height", "width", "timesteps"):
        assert f"`{name}`" in str(err)
    assert "text2img" in str(err)


def test_run_missing_inputs_checked_before_any_block_runs():
    calls = []

    @mb.block(output="y")
    def first(x: int) -> int:
        calls.append(x)
        return x

    @mb.block(output="z")
    def second(y: int, other: int) -> int:
        return y + other

    with pytest.raises(MissingInputError) as info:
        (first >> second).run(x=1)
    assert info.value.names == ("other",)
    assert calls == []


def test_run_unknown_input_suggests():
    with pytest.raises(
        UnknownInputError, match=r"no input `promt`.*Did you mean `prompt`\?"
    ) as info:
        text2img.run(promt="cat", height=1, width=1, timesteps=[])
    assert info.value.names == ("promt",)
    assert info.value.node == "text2img"


def test_run_unknown_inputs_listed_together():
    with pytest.raises(UnknownInputError) as info:
        module_double.run(x=1, a=1, b=2)
    assert info.value.names == ("a", "b")


def test_run_rejects_outputs_given_as_inputs_only_if_not_inputs():
    # `latents` is produced inside, so it is not an input of text2img.
    with pytest.raises(UnknownInputError):
        text2img.run(prompt="cat", height=1, width=1, timesteps=[], latents=[1])


def test_run_keys_of_a_passed_state_are_not_checked():
    start = mb.State(x=1, unrelated="yes", another=None)
    final = module_double.run(start)
    assert final["unrelated"] == "yes"
    assert final["y"] == 2


def test_run_none_is_a_value_distinct_from_absent():
    @mb.block(output="seen")
    def show(value: Any = "default") -> Any:
        return value

    assert show.run(value=None)["seen"] is None
    assert show.run()["seen"] == "default"
    assert show.run(mb.State(value=None))["seen"] is None

    @mb.block(output="seen")
    def needs(value: Any) -> Any:
        return value

    assert needs.run(value=None)["seen"] is None
    with pytest.raises(MissingInputError):
        needs.run()


def test_run_absent_optional_input_is_not_in_state():
    final = prepare_latents.run(batch_size=1, height=1, width=1)
    assert "seed" not in final
    assert final["latents"] == [1, 1, 1, None]


def test_run_block_keyword_only_inputs():
    @mb.block(output="y")
    def kw(*, a: int, b: int = 2) -> int:
        return a * b

    assert kw.run(a=3)["y"] == 6
    assert (module_double.rename(y="a") >> kw).run(x=1)["y"] == 4


def test_calling_a_composite_node_runs_it():
    seq = module_double >> module_inc
    final = seq(x=1)
    assert isinstance(final, mb.State)
    assert dict(final) == {"x": 3, "y": 2}
    assert dict(seq(mb.State(x=2))) == {"x": 5, "y": 4}


# -- errors -----------------------------------------------------------------------------------


def _broken_denoise(at: int, times: int = 1):
    failures: list[int] = []

    @mb.block(output="noise")
    def unet(latents: list, t: int, i: int) -> int:
        if i == at and len(failures) < times:
            failures.append(i)
            raise ValueError("nan in unet")
        return t

    @mb.block(output="latents")
    def scheduler_step(latents: list, noise: int) -> list:
        return [*latents, noise]

    return (
        encode_prompt
        >> prepare_latents
        >> mb.loop(unet >> scheduler_step, over="timesteps", name="denoise")
        >> decode
    ).named("outer")


def test_run_block_error_has_path_cause_and_state():
    pipe = _broken_denoise(at=2)
    with pytest.raises(BlockError) as info:
        pipe.run(prompt="cat", height=1, width=1, timesteps=[5, 6, 7, 8])
    err = info.value
    assert err.path == "outer > denoise[step 2] > unet"
    assert err.block == "unet"
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "nan in unet"
    assert isinstance(err, RuntimeError)
    text = str(err)
    assert "`unet`" in text
    assert "ValueError" in text
    assert "nan in unet" in text
    assert "outer > denoise[step 2] > unet" in text
    state = err.state
    assert isinstance(state, mb.State)
    assert state["embeds"] == 3
    assert state["latents"] == [1, 1, 1, None, 5, 6]
    assert state["noise"] == 6
    assert "images" not in state
    assert "i" not in state


def test_run_block_error_of_top_level_sequence():
    @mb.block(output="z")
    def boom(y: int) -> int:
        raise ZeroDivisionError

    with pytest.raises(BlockError) as info:
        (module_double >> boom).run(x=1)
    assert info.value.path == "boom"
    assert dict(info.value.state) == {"x": 1, "y": 2}
    with pytest.raises(BlockError) as info:
        (module_double >> boom).named("pipe").run(x=1)
    assert info.value.path == "pipe > boom"


def test_run_block_error_of_single_block():
    @mb.block(output="z")
    def boom(y: int) -> int:
        raise KeyError("inner key")

    with pytest.raises(BlockError) as info:
        boom.run(y=1)
    assert info.value.path == "boom"
    assert isinstance(info.value.__cause__, KeyError)
    assert dict(info.value.state) == {"y": 1}


def test_run_key_error_inside_a_block_is_a_block_error_not_missing_input():
    @mb.block(output="z")
    def lookup(table: dict, key: str) -> int:
        return table[key]

    with pytest.raises(BlockError) as info:
        lookup.run(table={}, key="k")
    assert isinstance(info.value.__cause__, KeyError)


def test_run_block_error_keeps_traceback_of_cause():
    @mb.block(output="z")
    def boom(y: int) -> int:
        raise ValueError("deep")

    with pytest.raises(BlockError) as info:
        boom.run(y=1)
    tb = info.value.__cause__.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "boom" in frames


def test_run_block_error_path_in_nested_named_sequences():
    @mb.block(output="z")
    def boom(y: int) -> int:
        raise ValueError

    inner = (module_double >> boom).named("inner")
    outer = (module_inc.rename(y="w", x="y0") >> inner).named("outer")
    with pytest.raises(BlockError) as info:
        outer.run(w=1, x=1)
    assert info.value.path == "outer > inner > boom"


def test_run_block_error_state_is_not_changed_by_later_runs():
    pipe = _broken_denoise(at=0, times=5)
    with pytest.raises(BlockError) as first:
        pipe.run(prompt="cat", height=1, width=1, timesteps=[5])
    snapshot = dict(first.value.state)
    with pytest.raises(BlockError):
        pipe.run(prompt="other", height=2, width=2, timesteps=[5])
    assert dict(first.value.state) == snapshot


def test_block_error_pickles():
    pipe = _broken_denoise(at=1)
    with pytest.raises(BlockError) as info:
        pipe.run(prompt="cat", height=1, width=1, timesteps=[5, 6])
    err = info.value
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is BlockError
    assert str(clone) == str(err)
    assert clone.args == err.args
    assert clone.path == err.path
    assert clone.block == err.block
    assert dict(clone.state) == dict(err.state)


def test_missing_input_error_from_a_run_pickles():
    with pytest.raises(MissingInputError) as info:
        text2img.run(prompt="cat")
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)
    assert clone.names == info.value.names


# -- resume -----------------------------------------------------------------------------------


def test_resume_sequence_after_failure_equals_uninterrupted_run():
    failures = []

    @mb.block(output="z")
    def flaky(y: int) -> int:
        if not failures:
            failures.append(1)
            raise ConnectionError("try again")
        return y * 100

    calls = []

    @mb.block(output="y")
    def expensive(x: int) -> int:
        calls.append(x)
        return x + 1

    @mb.block(output="w")
    def last(z: int) -> int:
        return z + 1

    pipe = (expensive >> flaky >> last).named("pipe")
    with pytest.raises(BlockError) as info:
        pipe.run(x=1)
    assert info.value.path == "pipe > flaky"
    resumed = pipe.run(info.value.state, resume=info.value.path)
    assert calls == [1]  # the expensive block did not run again
    assert dict(resumed) == {"x": 1, "y": 2, "z": 200, "w": 201}
    assert dict(resumed) == dict(pipe.run(x=1))


def test_resume_loop_step_after_failure_equals_uninterrupted_run():
    inputs = {"prompt": "cat", "height": 1, "width": 1, "timesteps": [5, 6, 7, 8]}
    pipe = _broken_denoise(at=2)
    with pytest.raises(BlockError) as info:
        pipe.run(**inputs)
    resumed = pipe.run(info.value.state, resume=info.value.path)
    expected = _broken_denoise(at=-1).run(**inputs)
    assert dict(resumed) == dict(expected)
    assert list(resumed) == list(expected)


def test_resume_by_sub_block_name():
    pipe = module_double >> module_inc >> module_double.named("again")
    final = pipe.run(mb.State(x=0, y=10), resume="module_inc")
    assert dict(final) == {"x": 11, "y": 22}


def test_resume_without_the_values_it_needs_is_a_missing_input_error():
    pipe = (module_double >> module_inc).named("pipe")
    with pytest.raises(MissingInputError) as info:
        pipe.run(mb.State(), resume="module_inc")
    err = info.value
    assert err.names == ("y",)
    assert err.path == "pipe > module_inc"
    assert "`y`" in str(err)


def test_output_error_inside_loop_has_step_in_path():
    class Pair(NamedTuple):
        a: int

    @mb.block
    def bad(latents: int, t: int) -> Pair:
        return 3  # type: ignore[return-value]

    with pytest.raises(mb.OutputError) as info:
        mb.loop(bad, over="ts", name="denoise").run(latents=1, ts=[1])
    assert info.value.path == "denoise[step 0] > bad"
    assert dict(info.value.state) == {"latents": 1, "ts": [1]}


def test_resume_unknown_name_suggests():
    pipe = module_double >> module_inc
    with pytest.raises(KeyError, match=r"Did you mean `module_inc`"):
        pipe.run(mb.State(y=1), resume="module_in")


def test_resume_rejects_unknown_inputs():
    pipe = module_double >> module_inc
    with pytest.raises(UnknownInputError):
        pipe.run(mb.State(y=1), resume="module_inc", yy=2)


# -- pickling composite nodes -----------------------------------------------------------------


def _composites() -> dict[str, mb.Node]:
    return {
        "sequence": module_double >> module_inc,
        "named": (module_double >> module_inc).named("pipe"),
        "loop": mb.loop(module_double >> module_inc, over="ts"),
        "switch": mb.switch({"double": module_double}, select=module_select, default=module_double),
        "renamed": (module_double >> module_inc).rename(x="a"),
        "bound": (module_double >> module_inc).bind(x=5),
    }


INPUTS = {
    "sequence": {"x": 1},
    "named": {"x": 1},
    "loop": {"x": 1, "ts": [0, 0]},
    "switch": {"x": 1, "mode": "double"},
    "renamed": {"a": 1},
    "bound": {},
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_composite_nodes_pickle_by_value(kind):
    node = _composites()[kind]
    clone = pickle.loads(pickle.dumps(node))
    assert clone is not node
    assert type(clone) is type(node)
    assert dict(clone.run(**INPUTS[kind])) == dict(node.run(**INPUTS[kind]))


@pytest.mark.parametrize("kind", list(INPUTS))
def test_composite_nodes_pickle_after_they_have_run(kind):
    """Pipelines are run, then shipped to workers: a run must not make a node unpicklable."""
    node = _composites()[kind]
    expected = dict(node.run(**INPUTS[kind]))
    clone = pickle.loads(pickle.dumps(node))
    assert dict(clone.run(**INPUTS[kind])) == expected


def test_pickled_sequence_shares_module_level_blocks():
    seq = module_double >> module_inc
    clone = pickle.loads(pickle.dumps(seq))
    assert clone.nodes == (module_double, module_inc)
    assert clone.names == seq.names


# -- threads ----------------------------------------------------------------------------------


def _thread_pipe():
    @mb.block(output="y")
    def scale(x: int, factor: int) -> int:
        time.sleep(0)  # let other threads in between reading and writing
        return x * factor

    @mb.block(output="acc")
    def accumulate(acc: int, y: int, t: int) -> int:
        time.sleep(0)
        return acc + y + t

    @mb.block(output="tag")
    def tag(acc: int, name: str) -> str:
        return f"{name}:{acc}"

    return (scale >> mb.loop(accumulate, over="ts", name="sum") >> tag).named("pipe")


@pytest.mark.parametrize("with_hooks", [False, True], ids=["plain", "on_step"])
def test_run_from_many_threads_has_no_cross_talk(with_hooks):
    pipe = _thread_pipe()
    barrier = threading.Barrier(8)
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(5)
            out = []
            for rep in range(30):
                steps: list[int] = []
                hooks = (
                    {"on_step": lambda s, steps=steps: steps.append(s.index)} if with_hooks else {}
                )
                final = pipe.run(x=n, factor=rep, acc=0, ts=list(range(n)), name=f"w{n}", **hooks)
                if with_hooks:
                    assert steps == list(range(n))
                out.append((final["tag"], final["y"], sorted(final)))
            results[n] = out
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    for n in range(8):
        for rep, (tag, y, keys) in enumerate(results[n]):
            expected_acc = (n * rep) * n + sum(range(n))
            assert tag == f"w{n}:{expected_acc}"
            assert y == n * rep
            assert keys == sorted(["x", "factor", "acc", "ts", "name", "y", "tag"])


def test_block_errors_from_many_threads_keep_their_own_state():
    @mb.block(output="y")
    def fail_on_odd(x: int) -> int:
        time.sleep(0)
        if x % 2:
            raise ValueError(x)
        return x

    pipe = (module_double.rename(y="d") >> fail_on_odd).named("pipe")
    seen: dict[int, Any] = {}

    def worker(n: int) -> None:
        try:
            for _ in range(20):
                pipe.run(x=n)
        except BlockError as err:
            seen[n] = (err.path, dict(err.state), err.__cause__.args)
        except BaseException as exc:
            seen[n] = exc
        else:
            seen[n] = "ok"

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for n in range(8):
        if n % 2:
            assert seen[n] == ("pipe > fail_on_odd", {"x": n, "d": 2 * n}, (n,))
        else:
            assert seen[n] == "ok"


def test_run_tensors_not_cloned():
    tensor = torch.ones(3)

    @mb.block(output="same")
    def ident(t: torch.Tensor) -> torch.Tensor:
        return t

    final = (ident >> ident.rename(same="again", t="same")).run(t=tensor)
    assert final["t"] is tensor
    assert final["same"] is tensor
    assert final["again"] is tensor


def test_run_takes_a_mapping_as_its_state():
    @mb.block(output="y")
    def inc(y: int) -> int:
        return y + 1

    with pytest.raises(mb.InputTypeError, match="not list") as info:
        (inc >> inc).run([1, 2])  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    with pytest.raises(mb.InputTypeError, match="not strings"):
        inc.run({1: 2})  # type: ignore[dict-item]


# -- values checked at the boundary -----------------------------------------------------------


@mb.block(output="steps")
def count_steps(
    num_inference_steps: int, mode: Literal["np", "pil"] = "np", scale: float | None = None
) -> int:
    return num_inference_steps


@mb.block(output="label")
def label(steps: int, names: list[str] | None = None) -> str:
    return f"{steps}"


def test_run_checks_values_against_their_first_readers_type_before_anything_runs():
    ran: list[str] = []

    @mb.block(output="first")
    def first(x: int) -> int:
        ran.append("first")
        return x

    seq = first >> count_steps >> label
    with pytest.raises(mb.InputTypeError, match="`sequence > count_steps` reads it as int") as info:
        seq.run(x=1, num_inference_steps="50")
    assert (info.value.name, info.value.expected) == ("num_inference_steps", int)
    assert isinstance(info.value, TypeError)
    with pytest.raises(mb.InputTypeError, match="Literal"):
        seq.run(x=1, num_inference_steps=2, mode="png")
    with pytest.raises(mb.InputTypeError, match=r"float \| None"):
        seq.run(x=1, num_inference_steps=2, scale="high")
    with pytest.raises(mb.InputTypeError, match="list"):
        seq.run(x=1, num_inference_steps=2, names="a")
    assert ran == []
    # What the annotations allow passes: int for float (PEP 484), None for Optional, bool for
    # int, any list for list[str] (its items are not read).
    final = seq.run(x=1, num_inference_steps=True, mode="pil", scale=2, names=[1])
    assert final["label"] == "True"


def test_pipeline_can_skip_the_value_check_for_hot_loops():
    pipe = mb.Pipeline(count_steps, check_types=False)
    assert pipe(num_inference_steps="5", output="steps") == "5"
    with pytest.raises(mb.InputTypeError):
        mb.Pipeline(count_steps)(num_inference_steps="5")


def test_switch_inputs_take_what_any_branch_reads():
    @mb.block(output="y")
    def as_int(x: int) -> int:
        return x

    @mb.block(output="y")
    def as_text(x: str) -> int:
        return len(x)

    sw = mb.switch({"flag": as_int}, default=as_text)
    assert sw.run(x="abc")["y"] == 3
    assert sw.run(x=4, flag=True)["y"] == 4
    with pytest.raises(mb.InputTypeError):
        sw.run(x=2.5)


def test_run_options_are_checked_before_anything_runs():
    ran: list[int] = []

    @mb.block(output="y")
    def f(x: int) -> int:
        ran.append(x)
        return x

    for option, value in (("on_step", 3), ("events", "log"), ("cancel", True), ("cache", {})):
        with pytest.raises(mb.InputTypeError, match=f"run\\({option}=...\\)` takes") as info:
            f.run(x=1, **{option: value})
        assert info.value.name == option
    assert ran == []


def test_composing_a_plain_function_says_to_make_it_a_block():
    @mb.block(output="y")
    def f(x: int) -> int:
        return x

    def g(y: int) -> int:
        return y

    with pytest.raises(mb.WiringError, match="Make `g` a block first"):
        f >> g  # type: ignore[operator]
    with pytest.raises(mb.WiringError, match="Make `g` a block first"):
        g >> f  # type: ignore[operator]
    with pytest.raises(mb.WiringError, match="not int 3"):
        f >> 3  # type: ignore[operator]
