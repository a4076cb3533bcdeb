"""`mb.Cache`: blocks whose inputs, components and code are unchanged are served, not run."""

import functools
import operator
from collections import Counter
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modblocks as mb
from tests.strategies import build_block, chains, inputs_for, reference_run

# Random chains give one input different defaults on purpose: the reference model covers it.
pytestmark = pytest.mark.filterwarnings("ignore::modblocks.DefaultsWarning")

calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_calls():
    calls.clear()


# -- a small text-to-image chain: encode(prompt) > prepare(generator) > loop > decode ----------


@mb.block(output="emb")
def encode(prompt: str) -> torch.Tensor:
    calls["encode"] += 1
    return torch.arange(4, dtype=torch.float32) * len(prompt)


@mb.block(output="latents")
def prepare(emb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    calls["prepare"] += 1
    return emb + torch.randn(4, generator=generator)


@mb.block(output="latents")
def step(latents: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    calls["step"] += 1
    return latents * 0.9 + 0.1 * t * torch.randn(4, generator=generator)


@mb.block(output="image")
def decode(latents: torch.Tensor) -> torch.Tensor:
    calls["decode"] += 1
    return latents.tanh()


denoise = mb.loop(step, over="timesteps", name="denoise")
t2i = (encode >> prepare >> denoise >> decode).named("t2i")


def _t2i(cache: mb.Cache | None, seed: int, timesteps=(3, 2, 1), prompt="a cat", **kwargs):
    generator = torch.Generator().manual_seed(seed)
    state = t2i.run(
        prompt=prompt, generator=generator, timesteps=list(timesteps), cache=cache, **kwargs
    )
    return state, generator


# -- plain counting blocks ---------------------------------------------------------------------


@mb.block(output="a")
def first(x: int) -> int:
    calls["first"] += 1
    return x + 1


@mb.block(output="b")
def second(y: int) -> int:
    calls["second"] += 1
    return y * 10


@mb.block(output="c")
def combine(a: int, b: int) -> int:
    calls["combine"] += 1
    return a + b


@mb.block(output="d")
def last(c: int) -> int:
    calls["last"] += 1
    return -c


chain = (first >> second >> combine >> last).named("chain")


def test_cache_serves_an_identical_second_run_with_one_lookup():
    cache = mb.Cache()
    before = chain.run(x=1, y=2, cache=cache)
    assert calls == {"first": 1, "second": 1, "combine": 1, "last": 1}
    # Four blocks and the sequence as a whole: five entries.
    assert cache.stats() == mb.CacheStats(hits=0, misses=5, entries=5, bytes=0, evictions=0)
    report = mb.Report()
    after = chain.run(x=1, y=2, cache=cache, events=report)
    assert calls == {"first": 1, "second": 1, "combine": 1, "last": 1}
    assert cache.stats().hits == 1  # the sequence, served whole
    assert report.cached == ["chain"]
    assert dict(after) == dict(before) == {"x": 1, "y": 2, "a": 2, "b": 20, "c": 22, "d": -22}
    assert list(after) == list(before)


def test_cache_reruns_only_the_changed_input_and_its_dependents():
    cache = mb.Cache()
    chain.run(x=1, y=2, cache=cache)
    calls.clear()
    report = mb.Report()
    state = chain.run(x=1, y=3, cache=cache, events=report)
    assert calls == {"second": 1, "combine": 1, "last": 1}
    assert report.cached == ["chain > first"]
    assert report.ran == ["chain > second", "chain > combine", "chain > last"]
    assert state["d"] == -(2 + 30)


def test_cache_change_in_the_other_branch_reruns_that_branch_only():
    cache = mb.Cache()
    chain.run(x=1, y=2, cache=cache)
    calls.clear()
    chain.run(x=2, y=2, cache=cache)
    assert calls == {"first": 1, "combine": 1, "last": 1}


def test_cache_without_a_cache_always_runs():
    chain.run(x=1, y=2)
    chain.run(x=1, y=2)
    assert calls["first"] == 2


def test_cache_fingerprints_plain_values_by_type_and_value():
    pipe = mb.Pipeline(first, cache=mb.Cache(), check_types=False)  # let a float through
    pipe(x=3)
    pipe(x=3)
    assert calls["first"] == 1
    pipe(x=3.0)  # equal, but a float: another value
    assert calls["first"] == 2


def test_cache_equal_new_list_hits_and_changed_list_misses():
    @mb.block(output="n")
    def total(values: list) -> int:
        calls["total"] += 1
        return sum(values)

    cache = mb.Cache()
    total.run(values=[1, 2], cache=cache)
    total.run(values=[1, 2], cache=cache)
    assert calls["total"] == 1
    assert total.run(values=[1, 3], cache=cache)["n"] == 4
    assert calls["total"] == 2


# -- generators: the seed-change scenario ------------------------------------------------------


def test_cache_seed_change_reruns_only_what_reads_the_generator():
    cache = mb.Cache()
    _t2i(cache, seed=0)
    calls.clear()
    report = mb.Report()
    cached, _ = _t2i(cache, seed=1, events=report)
    assert calls == {"prepare": 1, "step": 3, "decode": 1}
    assert report.cached == ["t2i > encode"]
    assert report.ran == [
        "t2i > prepare",
        "t2i > denoise[step 0] > step",
        "t2i > denoise[step 1] > step",
        "t2i > denoise[step 2] > step",
        "t2i > decode",
    ]
    uncached, _ = _t2i(None, seed=1)
    assert torch.equal(cached["image"], uncached["image"])
    assert torch.equal(cached["latents"], uncached["latents"])


def test_cache_same_seed_serves_everything_and_matches_uncached_run_bit_for_bit():
    cache = mb.Cache()
    _t2i(cache, seed=5)
    calls.clear()
    report = mb.Report()
    cached, _ = _t2i(cache, seed=5, events=report)
    assert calls == {}
    assert report.cached == ["t2i"]  # served whole
    uncached, _ = _t2i(None, seed=5)
    assert torch.equal(cached["image"], uncached["image"])


def test_cache_hit_leaves_the_generator_as_an_uncached_run_would():
    cache = mb.Cache()
    _t2i(cache, seed=7)
    _, cached_generator = _t2i(cache, seed=7)
    _, plain_generator = _t2i(None, seed=7)
    assert torch.equal(cached_generator.get_state(), plain_generator.get_state())
    # ... so later draws are the same as after an uncached run.
    assert torch.equal(
        torch.randn(3, generator=cached_generator), torch.randn(3, generator=plain_generator)
    )


def test_cache_served_prepare_then_rerun_loop_draws_the_same_noise():
    """`prepare` is a hit (generator restored to after it), the loop re-runs on new steps."""
    cache = mb.Cache()
    _t2i(cache, seed=3, timesteps=(3, 2, 1))
    calls.clear()
    cached, cached_generator = _t2i(cache, seed=3, timesteps=(5, 4))
    assert calls == {"step": 2, "decode": 1}
    uncached, plain_generator = _t2i(None, seed=3, timesteps=(5, 4))
    assert torch.equal(cached["image"], uncached["image"])
    assert torch.equal(cached_generator.get_state(), plain_generator.get_state())


def test_cache_loop_is_one_unit_its_steps_are_not_cached_alone():
    cache = mb.Cache()
    _t2i(cache, seed=0, timesteps=(3, 2))
    calls.clear()
    report = mb.Report()
    _t2i(cache, seed=0, timesteps=(3, 2, 1), events=report)
    assert calls == {"step": 3, "decode": 1}  # steps 0 and 1 are the same, yet they run
    assert report.cached == ["t2i > encode", "t2i > prepare"]


def test_cache_loop_with_on_step_is_never_served():
    seen = []
    watched = mb.loop(step, over="timesteps", name="denoise", on_step=lambda s: seen.append(s))
    pipe = (encode >> prepare >> watched >> decode).named("t2i")
    cache = mb.Cache()
    for _ in range(2):
        pipe.run(
            prompt="a", generator=torch.Generator().manual_seed(0), timesteps=[2, 1], cache=cache
        )
    assert calls == {"encode": 1, "prepare": 1, "step": 4, "decode": 2}
    assert len(seen) == 4


def test_cache_run_with_on_step_reruns_the_loop_and_what_follows():
    cache = mb.Cache()
    _t2i(cache, seed=0)
    calls.clear()
    steps = []
    state, _ = _t2i(cache, seed=0, on_step=lambda s: steps.append(s.index))
    assert steps == [0, 1, 2]
    assert calls == {"step": 3, "decode": 1}
    assert torch.equal(state["image"], _t2i(None, seed=0)[0]["image"])


# -- purity --------------------------------------------------------------------------------------


def test_cache_false_block_always_runs_and_its_dependents_rerun_only_if_it_changed():
    returned = iter([20, 20, 30])

    @mb.block(output="b", cache=False)
    def impure(y: int) -> int:
        calls["impure"] += 1
        return next(returned)

    pipe = (first >> impure >> combine >> last).named("p")
    cache = mb.Cache()
    pipe.run(x=1, y=2, cache=cache)
    calls.clear()
    report = mb.Report()
    same = pipe.run(x=1, y=2, cache=cache, events=report)
    assert calls == {"impure": 1}  # it returned the same value: what reads it is served
    assert report.cached == ["p > first", "p > combine", "p > last"]
    calls.clear()
    changed = pipe.run(x=1, y=2, cache=cache)
    assert calls == {"impure": 1, "combine": 1, "last": 1}
    assert (same["b"], same["c"]) == (20, 22)
    assert (changed["b"], changed["c"]) == (30, 32)


# -- tensors -------------------------------------------------------------------------------------


@mb.block(output="y")
def double(x: torch.Tensor) -> torch.Tensor:
    calls["double"] += 1
    return x * 2


def test_cache_keys_tensors_by_content_by_default_and_by_identity_if_asked():
    cache = mb.Cache()
    x = torch.ones(3)
    double.run(x=x, cache=cache)
    double.run(x=x, cache=cache)
    assert calls["double"] == 1
    double.run(x=torch.ones(3), cache=cache)  # contents, not identity, by default
    assert calls["double"] == 1
    by_identity = mb.Cache(hash_tensors=False)
    double.run(x=x, cache=by_identity)
    double.run(x=torch.ones(3), cache=by_identity)
    assert calls["double"] == 3


def test_cache_misses_after_an_inplace_change_of_an_input_tensor():
    cache = mb.Cache()
    x = torch.ones(3)
    double.run(x=x, cache=cache)
    x.add_(1)
    y = double.run(x=x, cache=cache)["y"]
    assert calls["double"] == 2
    assert torch.equal(y, torch.full((3,), 4.0))


def test_cache_hash_tensors_hits_for_an_equal_new_tensor():
    cache = mb.Cache(hash_tensors=True)
    double.run(x=torch.ones(3), cache=cache)
    double.run(x=torch.ones(3), cache=cache)
    assert calls["double"] == 1
    x = torch.ones(3)
    double.run(x=x, cache=cache)
    x[0] = 5.0
    assert double.run(x=x, cache=cache)["y"].tolist() == [10.0, 2.0, 2.0]
    double.run(x=torch.ones(3, dtype=torch.float64), cache=cache)  # same values, other dtype
    assert calls["double"] == 3


def test_cache_inplace_change_of_an_inference_tensor_misses():
    """Inference tensors (what a Pipeline returns) keep no version counter."""
    cache = mb.Cache()
    with torch.inference_mode():
        x = torch.ones(3)
        double.run(x=x, cache=cache)
        x.add_(1)
        y = double.run(x=x, cache=cache)["y"]
    assert torch.equal(y, torch.full((3,), 4.0))


def test_cache_output_changed_in_place_by_the_caller_is_not_served():
    """A cached result the caller modified since is not what the block returned."""
    cache = mb.Cache()
    x = torch.ones(3)
    y = double.run(x=x, cache=cache)["y"]
    y.add_(100)  # the caller post-processes the result in place
    again = double.run(x=x, cache=cache)["y"]
    assert torch.equal(again, torch.full((3,), 2.0))


def test_cache_arrays_and_images_edited_in_place_between_calls_miss():
    """NumPy arrays and PIL images are fingerprinted by content, not by identity."""
    import numpy as np
    from PIL import Image

    @mb.block(output="total")
    def total(pixels: np.ndarray, image: Image.Image) -> int:
        calls["total"] += 1
        return int(pixels.sum()) + int(np.asarray(image).sum())

    cache = mb.Cache()
    pixels, image = np.zeros((4, 4), np.uint8), Image.new("L", (4, 4))
    assert total.run(pixels=pixels, image=image, cache=cache)["total"] == 0
    pixels[0, 0] = 3
    assert total.run(pixels=pixels, image=image, cache=cache)["total"] == 3
    image.putpixel((1, 1), 4)
    assert total.run(pixels=pixels, image=image, cache=cache)["total"] == 7
    calls.clear()
    copies = {"pixels": pixels.copy(), "image": image.copy()}  # equal contents: a hit
    assert total.run(**copies, cache=cache)["total"] == 7
    assert calls == {}


def test_cache_results_changed_in_place_are_served_unchanged():
    """Stored results are private copies: editing what a run returned changes nothing."""
    import numpy as np

    @mb.block(output="pixels")
    def render(value: int) -> np.ndarray:
        return np.full((2, 2), value, np.float32)

    class Stepper:
        def __init__(self) -> None:
            self.steps = 0

    @mb.block(output="stepper")
    def make_stepper(value: int) -> Stepper:
        return Stepper()

    cache = mb.Cache()
    first = (render >> make_stepper).run(value=1, cache=cache)
    pixels = first["pixels"]
    pixels *= 255  # the caller post-processes in place
    first["stepper"].steps += 5  # a later block steps it (as a scheduler is stepped)
    again = (render >> make_stepper).run(value=1, cache=cache)
    assert again["pixels"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert again["stepper"].steps == 0
    again["stepper"].steps += 1
    assert (render >> make_stepper).run(value=1, cache=cache)["stepper"].steps == 0


# -- components ----------------------------------------------------------------------------------


@mb.block(output="h")
def project(x: torch.Tensor, proj: mb.Component[torch.nn.Linear]) -> torch.Tensor:
    calls["project"] += 1
    return proj(x.to(proj.weight.dtype))


@mb.block(output="out")
def finish(h: torch.Tensor) -> torch.Tensor:
    calls["finish"] += 1
    return h.sum(dim=-1)


@mb.block(output="other")
def unrelated(x: torch.Tensor) -> torch.Tensor:
    calls["unrelated"] += 1
    return x - 1


projection = (unrelated >> project >> finish).named("proj_chain")


def _linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_touch_makes_blocks_reading_the_component_rerun():
    cache = mb.Cache()
    lin = _linear(0)
    x = torch.ones(1, 3)
    with torch.no_grad():
        before = projection.run(x=x, proj=lin, cache=cache)["out"]
        lin.bias.add_(1.0)
    mb.touch(lin)
    calls.clear()
    with torch.no_grad():
        after = projection.run(x=x, proj=lin, cache=cache)["out"]
    assert calls == {"project": 1, "finish": 1}
    assert torch.allclose(after, before + 2.0)


def test_pipeline_with_components_swap_reruns_blocks_using_it():
    cache = mb.Cache()
    x = torch.ones(1, 3)
    pipe = mb.Pipeline(projection, components={"proj": _linear(0)}, cache=cache)
    pipe(x=x)
    other = pipe.with_components(proj=_linear(1))
    calls.clear()
    report = mb.Report()
    swapped = other.run(x=x, events=report)["out"]
    assert calls == {"project": 1, "finish": 1}
    assert report.cached == ["proj_chain > unrelated"]
    expected = mb.Pipeline(projection, components={"proj": _linear(1)})(x=x, output="out")
    assert torch.equal(swapped, expected)
    calls.clear()
    pipe(x=x)  # the original pipeline's results are still valid
    assert calls == {}


def test_pipeline_to_dtype_reruns_blocks_using_the_moved_component():
    cache = mb.Cache()
    x = torch.ones(1, 3)
    pipe = mb.Pipeline(projection, components={"proj": _linear(0)}, cache=cache)
    pipe(x=x)
    calls.clear()
    out = pipe.to(dtype=torch.float64)(x=x, output="out")
    assert calls == {"project": 1, "finish": 1}
    assert out.dtype == torch.float64


# -- LRU -----------------------------------------------------------------------------------------


def test_cache_evicts_least_recently_used_beyond_max_entries():
    cache = mb.Cache(max_entries=2)
    first.run(x=1, cache=cache)
    first.run(x=2, cache=cache)
    first.run(x=1, cache=cache)  # hit: x=1 is now the most recently used
    first.run(x=3, cache=cache)  # evicts x=2
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (2, 1)
    assert calls["first"] == 3
    first.run(x=1, cache=cache)
    first.run(x=3, cache=cache)
    assert calls["first"] == 3
    first.run(x=2, cache=cache)
    assert calls["first"] == 4
    assert cache.stats().evictions == 2


@mb.block(output="t")
def filled(v: float, n: int = 4) -> torch.Tensor:
    calls["filled"] += 1
    return torch.full((n,), v)  # float32: 4 bytes per element


def test_cache_evicts_least_recently_used_beyond_max_bytes():
    cache = mb.Cache(max_bytes=40)
    filled.run(v=1.0, cache=cache)
    filled.run(v=2.0, cache=cache)
    assert cache.stats() == mb.CacheStats(hits=0, misses=2, entries=2, bytes=32, evictions=0)
    filled.run(v=3.0, cache=cache)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 32, 1)
    filled.run(v=1.0, cache=cache)  # the evicted one runs again
    assert calls["filled"] == 4


def test_cache_result_larger_than_max_bytes_is_not_stored_and_evicts_nothing():
    cache = mb.Cache(max_bytes=40)
    filled.run(v=1.0, cache=cache)
    filled.run(v=1.0, n=100, cache=cache)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (1, 16, 0)
    filled.run(v=1.0, n=100, cache=cache)
    assert calls["filled"] == 3


def test_cache_clear_drops_entries_and_keeps_counters():
    cache = mb.Cache()
    filled.run(v=1.0, cache=cache)
    filled.run(v=1.0, cache=cache)
    cache.clear()
    assert cache.stats() == mb.CacheStats(hits=1, misses=1, entries=0, bytes=0, evictions=0)
    filled.run(v=1.0, cache=cache)
    assert calls["filled"] == 2


# -- the in-place check --------------------------------------------------------------------------


@mb.block(output="y")
def double_inplace(x: torch.Tensor) -> torch.Tensor:
    return x.mul_(2)


def test_cache_check_inplace_raises_block_error_naming_block_and_value():
    with pytest.raises(mb.BlockError, match=r"`double_inplace`.*`x`.*in place") as info:
        double_inplace.run(x=torch.ones(3), cache=mb.Cache(check_inplace=True))
    assert info.value.block == "double_inplace"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_cache_check_inplace_is_off_by_default():
    x = torch.ones(3)
    double_inplace.run(x=x, cache=mb.Cache())
    assert x.tolist() == [2.0, 2.0, 2.0]


def test_cache_check_inplace_accepts_blocks_returning_new_tensors():
    state = t2i.run(
        prompt="a",
        generator=torch.Generator().manual_seed(0),
        timesteps=[1],
        cache=mb.Cache(check_inplace=True),
    )
    assert state["image"].shape == (4,)


def test_cache_check_inplace_covers_blocks_inside_loops():
    @mb.block(output="latents")
    def start(n: int) -> torch.Tensor:
        return torch.ones(n)

    @mb.block(output="latents")
    def step_inplace(latents: torch.Tensor, t: int) -> torch.Tensor:
        return latents.add_(t)  # corrupts `start`'s cached result

    pipe = (start >> mb.loop(step_inplace, over="timesteps", name="denoise")).named("p")
    with pytest.raises(mb.BlockError, match=r"step_inplace.*`latents`") as info:
        pipe.run(n=2, timesteps=[1, 2], cache=mb.Cache(check_inplace=True))
    assert info.value.block == "step_inplace"


# -- resume after a failure ----------------------------------------------------------------------


@mb.block(output="mixed")
def mix(emb: torch.Tensor, strength: float) -> torch.Tensor:
    calls["mix"] += 1
    if not 0 <= strength <= 1:
        msg = f"strength must be in [0, 1], got {strength}"
        raise ValueError(msg)
    return emb * strength


@mb.block(output="image")
def render(mixed: torch.Tensor) -> torch.Tensor:
    calls["render"] += 1
    return mixed + 1


def test_cache_second_call_after_failure_reruns_only_the_failed_block_and_after():
    pipe = (encode >> mix >> render).named("p")
    cache = mb.Cache()
    with pytest.raises(mb.BlockError, match="strength") as info:
        pipe.run(prompt="a cat", strength=2.0, cache=cache)
    assert info.value.block == "mix"
    calls.clear()
    report = mb.Report()
    state = pipe.run(prompt="a cat", strength=0.5, cache=cache, events=report)
    assert calls == {"mix": 1, "render": 1}
    assert report.cached == ["p > encode"]
    assert report.ran == ["p > mix", "p > render"]
    assert torch.equal(state["image"], pipe.run(prompt="a cat", strength=0.5)["image"])


# -- identity: what makes a block "the same code" ------------------------------------------------


def _scaler(factor: int) -> mb.Block:
    @mb.block(output="y")
    def scale(x: int) -> int:
        return x * factor

    return scale


def test_cache_distinguishes_blocks_with_different_closure_values():
    cache = mb.Cache()
    assert _scaler(2).run(x=3, cache=cache)["y"] == 6
    assert _scaler(3).run(x=3, cache=cache)["y"] == 9


def _producer(*fields: str) -> mb.Block:
    Out = NamedTuple("Out", [(field, int) for field in fields])  # fields chosen at run time

    @mb.block
    def produce(x: int) -> Out:
        return Out(*(x + k for k in range(len(fields))))

    return produce


def test_cache_distinguishes_blocks_with_different_outputs():
    cache = mb.Cache()
    assert dict(_producer("a").run(x=1, cache=cache)) == {"x": 1, "a": 1}
    assert dict(_producer("a", "b").run(x=1, cache=cache)) == {"x": 1, "a": 1, "b": 2}


def test_cache_changed_block_code_misses():
    @mb.block(output="y")
    def scale(x: int) -> int:
        return x * 2

    cache = mb.Cache()
    assert scale.run(x=3, cache=cache)["y"] == 6

    @mb.block(output="y")
    def scale(x: int) -> int:  # redefined, as in a notebook
        return x * 3

    assert scale.run(x=3, cache=cache)["y"] == 9


def test_cache_bound_generator_is_keyed_by_its_state():
    @mb.block(output="noise")
    def draw(generator: torch.Generator) -> torch.Tensor:
        return torch.randn(2, generator=generator)

    plain = draw.bind(generator=torch.Generator().manual_seed(0))
    expected = [plain.run()["noise"] for _ in range(2)]
    cached = draw.bind(generator=torch.Generator().manual_seed(0))
    cache = mb.Cache()
    actual = [cached.run(cache=cache)["noise"] for _ in range(2)]
    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])  # the generator moved on: a new draw


def test_cache_renamed_sequence_keys_follow_the_outer_values():
    @mb.block(output="a")
    def read_x(x: int) -> int:
        return x + 1

    @mb.block(output="z")
    def times100(x: int) -> int:
        return x * 100

    inner = (times100 >> last.rename(c="z")).named("inner").rename(x="y")
    pipe = read_x >> inner
    cache = mb.Cache()
    pipe.run(x=1, y=10, cache=cache)
    assert dict(pipe.run(x=1, y=20, cache=cache)) == dict(pipe.run(x=1, y=20))


# -- the property: a cached run is indistinguishable from an uncached one ------------------------


@given(data=st.data())
def test_cache_random_chains_cached_run_equals_uncached_run(data):
    specs = data.draw(chains())
    node = functools.reduce(operator.rshift, [build_block(s) for s in specs])
    before = data.draw(inputs_for(specs), label="first inputs")
    changes = data.draw(inputs_for(specs), label="changed values")
    keep = data.draw(st.sets(st.sampled_from(sorted(changes))) if changes else st.just(set()))
    after = {**before, **{k: v for k, v in changes.items() if k not in keep}}
    cache = mb.Cache()
    assert dict(node.run(cache=cache, **before)) == reference_run(specs, before)
    assert dict(node.run(cache=cache, **after)) == dict(node.run(**after))
    assert dict(node.run(cache=cache, **after)) == reference_run(specs, after)


def test_cache_tensor_in_a_list_changed_in_place_is_not_served():
    @mb.block(output="parts")
    def split(x: torch.Tensor) -> list[torch.Tensor]:
        return [x * 2, x * 3]

    cache = mb.Cache()
    x = torch.ones(2)
    parts = split.run(x=x, cache=cache)["parts"]
    parts[1].add_(100)  # the caller changes a tensor inside the stored list
    again = split.run(x=x, cache=cache)["parts"]
    assert [p.tolist() for p in again] == [[2.0, 2.0], [3.0, 3.0]]


# -- never stale ---------------------------------------------------------------------------------


def test_cache_sees_tensor_edits_that_bypass_the_version_counter():
    cache = mb.Cache()
    x = torch.ones(3)
    double.run(x=x, cache=cache)
    x.numpy()[0] = 99.0
    assert double.run(x=x, cache=cache)["y"].tolist() == [198.0, 2.0, 2.0]
    x.data.add_(1)
    assert double.run(x=x, cache=cache)["y"].tolist() == [200.0, 4.0, 4.0]


def test_cache_results_edited_by_the_caller_do_not_reach_the_next_call():
    @mb.block(output="d")
    def as_dict(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"t": x * 2}

    cache = mb.Cache()
    x = torch.ones(3)
    y = double.run(x=x, cache=cache)["y"]
    y.numpy()[:] = -1
    assert double.run(x=x, cache=cache)["y"].tolist() == [2.0, 2.0, 2.0]
    d = as_dict.run(x=x, cache=cache)["d"]
    d["t"].add_(100)
    assert as_dict.run(x=x, cache=cache)["d"]["t"].tolist() == [2.0, 2.0, 2.0]


def test_cache_keys_sets_and_object_arrays_by_content():
    import numpy as np

    @mb.block(output="n")
    def size(items: set[int]) -> int:
        calls["size"] += 1
        return len(items)

    cache = mb.Cache()
    items = {1, 2}
    assert size.run(items=items, cache=cache)["n"] == 2
    items.add(3)
    assert size.run(items=items, cache=cache)["n"] == 3
    assert size.run(items={3, 2, 1}, cache=cache)["n"] == 3  # an equal set: served
    assert calls["size"] == 2

    @mb.block(output="n")
    def count(objects: np.ndarray) -> int:
        return sum(len(o) for o in objects)

    objects = np.array([[1], [2, 3]], dtype=object)
    assert count.run(objects=objects, cache=cache)["n"] == 3
    objects[0].append(9)  # in place, inside an element
    assert count.run(objects=objects, cache=cache)["n"] == 4


def test_cache_refuses_a_container_that_holds_itself_with_a_named_error():
    @mb.block(output="n")
    def length(items: list[Any]) -> int:
        return len(items)

    items: list[Any] = [1]
    items.append(items)
    with pytest.raises(mb.CacheKeyError, match="contains itself") as info:
        length.run(items=items, cache=mb.Cache())
    assert isinstance(info.value, ValueError)
    assert info.value.path == "length"
    assert length.run(items=items)["n"] == 2  # without a cache it runs


def test_cache_keys_a_large_list_in_one_pass():
    @mb.block(output="total")
    def total(values: list[int]) -> int:
        calls["total"] += 1
        return sum(values)

    cache = mb.Cache()
    values = list(range(200_000))
    assert total.run(values=values, cache=cache)["total"] == sum(values)
    assert total.run(values=list(range(200_000)), cache=cache)["total"] == sum(values)
    assert calls["total"] == 1
    values[-1] = 0
    assert total.run(values=values, cache=cache)["total"] == sum(values)
    assert calls["total"] == 2


def test_cache_sees_models_changed_in_place_without_touch():
    cache = mb.Cache()
    proj = _linear(0)
    pipe = mb.Pipeline(project, components={"proj": proj}, cache=cache, inference_mode=False)
    x = torch.ones(1, 3)
    first = pipe(x=x, output="h")
    assert calls["project"] == 1
    with torch.no_grad():
        proj.weight.add_(1.0)  # an optimizer step, a LoRA fused by hand with add_
    assert not torch.equal(pipe(x=x, output="h"), first)
    proj.load_state_dict(_linear(0).state_dict())  # back to the first weights
    assert torch.equal(pipe(x=x, output="h"), first)
    proj.bias = torch.nn.Parameter(torch.zeros(2))  # a parameter replaced
    assert torch.equal(pipe(x=x, output="h"), x @ proj.weight.T)
    proj.to(torch.float64)
    assert pipe(x=x, output="h").dtype == torch.float64
    assert calls["project"] == 5


def test_a_model_made_in_inference_mode_is_run_not_served():
    # Its weights are inference tensors: changed in place in inference mode, they keep no
    # version counter to tell, so a block reading it can't be cached (and doesn't fail).
    with torch.inference_mode():
        proj = _linear(0)
    pipe = mb.Pipeline(project, components={"proj": proj}, cache=mb.Cache())
    x = torch.ones(1, 3)
    first = pipe(x=x, output="h")
    with torch.inference_mode():
        proj.weight.add_(1.0)
    assert torch.equal(pipe(x=x, output="h"), x @ proj.weight.T + proj.bias)
    assert not torch.equal(first, x @ proj.weight.T + proj.bias)
    assert calls["project"] == 2


def test_cache_sees_submodules_replaced_inside_a_model():
    @mb.block(output="h")
    def run_model(x: torch.Tensor, model: mb.Component[torch.nn.Sequential]) -> torch.Tensor:
        return model(x)

    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
    pipe = mb.Pipeline(run_model, components={"model": model}, cache=mb.Cache())
    x = torch.ones(2)
    assert pipe(x=x, output="h").tolist() == [1.0, 1.0]
    model[1] = torch.nn.ReLU()  # as loading a LoRA swaps layers
    model[0] = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model[0].weight.copy_(-torch.eye(2))
    assert pipe(x=x, output="h").tolist() == [0.0, 0.0]


def _unboxer(name: str) -> mb.Block[..., int]:
    """A block reading tensor `box_<name>` and writing its value as `<name>`."""

    def unbox(box: torch.Tensor) -> int:
        return int(box.sum())

    return mb.block(unbox, name=f"unbox_{name}", output=name).rename(box=f"box_{name}")


@given(chains(), st.data())
def test_cache_random_chains_with_random_inplace_edits_equal_uncached_runs(specs, data):
    """Whatever the caller edits in place between calls, a cached run equals an uncached one."""
    chain_node = mb.Sequential([build_block(s) for s in specs])
    names = [s.name for s in chain_node.inputs]
    node = mb.Sequential([*(_unboxer(n) for n in names), chain_node]) if names else chain_node
    boxes = {f"box_{n}": torch.tensor([data.draw(st.integers(-50, 50))]) for n in names}
    cache = mb.Cache(max_entries=data.draw(st.integers(1, 50)))
    for _ in range(4):
        assert dict(node.run(cache=cache, **boxes)) == dict(node.run(**boxes))
        if boxes:
            box = boxes[data.draw(st.sampled_from(sorted(boxes)))]
            value = data.draw(st.integers(-50, 50))
            how = data.draw(st.sampled_from(["numpy", "data", "inplace"]))
            if how == "numpy":
                box.numpy()[0] = value  # bypasses the version counter
            elif how == "data":
                box.data.fill_(value)  # so does .data
            else:
                box.fill_(value)
