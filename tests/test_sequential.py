"""`>>` and `mb.Sequential`: flattening, unique names, wiring by name, editing, rename, bind."""

import itertools
from typing import Annotated, NamedTuple

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typing_extensions import Doc

import modblocks as mb
from modblocks.exceptions import WiringError
from tests.strategies import (
    BlockSpec,
    build_block,
    build_element,
    chains,
    inputs_for,
    reference_names,
    reference_run,
    reference_switch_wiring,
    reference_wiring,
    switch_chains,
)

# Random chains give one input different defaults on purpose: the reference model covers it.
pytestmark = pytest.mark.filterwarnings("ignore::modblocks.DefaultsWarning")


@mb.block(output="y")
def f(x: int) -> int:
    """Add one."""
    return x + 1


@mb.block(output="z")
def g(y: int) -> int:
    """Double."""
    return y * 2


@mb.block(output="w")
def h(z: int, k: int = 3) -> int:
    """Add k."""
    return z + k


def _names(specs):
    return [s.name for s in specs]


def _sequence(blocks: list[mb.Node]) -> mb.Node:
    """One node for a non-empty list: the block itself, or the blocks chained with ``>>``."""
    node = blocks[0]
    for blk in blocks[1:]:
        node = node >> blk
    return node


def _parts(draw, items, count):
    """Split *items* into *count* non-empty consecutive parts at drawn places."""
    places = st.integers(1, len(items) - 1)
    cuts = draw(st.lists(places, unique=True, min_size=count - 1, max_size=count - 1))
    bounds = [0, *sorted(cuts), len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


# -- the algebra (Hypothesis) -----------------------------------------------------------------


@given(chains(min_size=3), st.data())
def test_sequential_rshift_is_associative(specs, data):
    blocks = [build_block(s) for s in specs]
    a, b, c = (_sequence(part) for part in _parts(data.draw, blocks, 3))
    left = (a >> b) >> c
    right = a >> (b >> c)
    assert left.nodes == right.nodes == tuple(blocks)
    assert left.names == right.names
    assert left.inputs == right.inputs
    assert left.outputs == right.outputs
    assert left.components == right.components


@given(chains(min_size=2), st.data())
def test_sequential_flattens_anonymous_sequences(specs, data):
    blocks = [build_block(s) for s in specs]
    count = data.draw(st.integers(1, len(blocks)))
    parts = _parts(data.draw, blocks, count)
    nested = mb.Sequential([_sequence(part) for part in parts])
    assert nested.nodes == tuple(blocks)
    assert nested.names == mb.Sequential(blocks).names
    assert all(isinstance(node, mb.Block) for node in nested.nodes)


@given(chains())
def test_sequential_unique_names(specs):
    seq = mb.Sequential([build_block(s) for s in specs])
    assert seq.names == reference_names(_names(specs))
    assert len(set(seq.names)) == len(seq.names)
    for name, node in zip(seq.names, seq.nodes, strict=True):
        assert seq[name] is node or seq[name].name == name


@given(chains())
def test_sequential_wiring_matches_reference(specs):
    seq = mb.Sequential([build_block(s) for s in specs])
    inputs, outputs = reference_wiring(specs)
    assert [(s.name, s.required) for s in seq.inputs] == list(inputs.items())
    assert [s.name for s in seq.outputs] == outputs
    assert all(s.type is int for s in seq.outputs)


@given(chains(), st.data())
def test_sequential_run_matches_reference(specs, data):
    seq = mb.Sequential([build_block(s) for s in specs])
    given_inputs = data.draw(inputs_for(specs))
    final = seq.run(**given_inputs)
    expected = reference_run(specs, given_inputs)
    assert dict(final) == expected
    assert list(final) == list(expected)  # inputs first, then outputs in production order


@given(chains(min_size=2), st.data())
def test_sequential_named_part_runs_like_the_flat_chain(specs, data):
    blocks = [build_block(s) for s in specs]
    first, second = _parts(data.draw, blocks, 2)
    nested = mb.Sequential(first, name="part") >> _sequence(second)
    flat = mb.Sequential(blocks)
    assert nested.names[0] == "part"
    assert [(s.name, s.required) for s in nested.inputs] == [
        (s.name, s.required) for s in flat.inputs
    ]
    assert [s.name for s in nested.outputs] == [s.name for s in flat.outputs]
    given_inputs = data.draw(inputs_for(specs))
    assert dict(nested.run(**given_inputs)) == dict(flat.run(**given_inputs))


# -- composing --------------------------------------------------------------------------------


def test_sequential_rshift_returns_frozen_sequential():
    seq = f >> g
    assert isinstance(seq, mb.Sequential)
    assert seq.nodes == (f, g)
    assert seq.name is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        seq.nodes = (g,)  # type: ignore[misc]


def test_sequential_repeated_block_names_both_groupings():
    assert ((f >> f) >> f).names == ("f", "f_2", "f_3")
    assert (f >> (f >> f)).names == ("f", "f_2", "f_3")
    assert (f >> g >> f >> g >> f).names == ("f", "g", "f_2", "g_2", "f_3")


def test_sequential_repeated_names_are_addressable():
    # Three different blocks all called `f`: each label finds its own one.
    def adder(k: int) -> mb.Block[..., int]:
        return mb.block(lambda x: x + k, name="f", output="x")

    first, second, third = adder(1), adder(2), adder(10)
    seq = first >> second >> third
    assert seq.names == ("f", "f_2", "f_3")
    assert seq["f"] is first
    assert seq["f_2"] is second
    assert seq["f_3"] is third
    assert seq(x=0)["x"] == 13


def test_sequential_named_sequence_stays_nested():
    inner = (f >> g).named("inner")
    outer = inner >> h
    assert outer.nodes == (inner, h)
    assert outer.names == ("inner", "h")
    assert outer["inner"] is inner
    assert inner.names == ("f", "g")
    outer2 = h >> inner
    assert outer2.nodes == (h, inner)


def test_sequential_named_gives_copy():
    seq = f >> g
    named = seq.named("pipe")
    assert named is not seq
    assert named.name == "pipe"
    assert seq.name is None
    assert named.nodes == seq.nodes


def test_sequential_constructor_and_from_dict():
    seq = mb.Sequential([f, g], name="pipe")
    assert seq.name == "pipe"
    assert seq.names == ("f", "g")
    built = mb.Sequential.from_dict({"input": f, "image_encoder": g})
    assert built.names == ("input", "image_encoder")
    assert built["input"].name == "input"
    assert built["input"].__wrapped__ is f.__wrapped__
    assert built.run(x=1)["z"] == 4


def test_sequential_from_dict_with_name():
    built = mb.Sequential.from_dict({"a": f, "b": g}, name="pipe")
    assert built.name == "pipe"
    assert built.names == ("a", "b")


def test_sequential_rejects_non_nodes():
    with pytest.raises(TypeError):
        f >> (lambda y: y)  # type: ignore[operator]
    with pytest.raises(WiringError):
        mb.Sequential([f, "g"])  # type: ignore[list-item]


def test_sequential_rejects_empty():
    with pytest.raises(WiringError):
        mb.Sequential([])


def test_sequential_len_iter_and_index():
    seq = f >> g >> h
    assert len(seq) == 3
    assert list(seq) == [f, g, h]
    assert seq[0] is f
    assert seq["h"] is h


# -- wiring -----------------------------------------------------------------------------------


def test_sequential_inputs_are_what_no_earlier_block_produces():
    seq = f >> g >> h
    assert [s.name for s in seq.inputs] == ["x", "k"]
    assert [s.name for s in seq.outputs] == ["y", "z", "w"]


def test_sequential_input_read_before_it_is_produced_is_an_input():
    seq = g >> f  # g reads y before f produces it
    assert [s.name for s in seq.inputs] == ["y", "x"]
    assert [s.name for s in seq.outputs] == ["z", "y"]


def test_sequential_input_required_if_its_first_consumer_requires_it():
    @mb.block(output="a")
    def optional_k(k: int = 7) -> int:
        return k

    @mb.block(output="b")
    def required_k(k: int) -> int:
        return k

    inputs = (optional_k >> required_k).inputs
    assert [(s.name, s.required, s.default) for s in inputs] == [("k", False, 7)]
    assert [(s.name, s.required) for s in (required_k >> optional_k).inputs] == [("k", True)]
    assert [(s.name, s.required) for s in (optional_k >> optional_k).inputs] == [("k", False)]


def test_later_consumer_that_requires_an_input_gets_the_first_consumers_default():
    @mb.block(output="a")
    def optional_k(k: int = 7) -> int:
        return k

    @mb.block(output="b")
    def required_k(k: int) -> int:
        return 10 * k

    seq = optional_k >> required_k
    assert seq.run().b == 70
    assert seq.run(k=2).b == 20
    assert seq.run(on_step=lambda _state: None).b == 70  # the path-tracking runner too
    assert list(seq.stream())[-1].b == 70


def test_sequential_produced_value_is_not_required_even_if_later_consumer_requires_it():
    @mb.block(output="k")
    def make_k(x: int) -> int:
        return x

    @mb.block(output="b")
    def required_k(k: int) -> int:
        return k

    assert [(s.name, s.required) for s in (make_k >> required_k).inputs] == [("x", True)]


def test_sequential_first_consumer_describes_the_input():
    @mb.block(output="a")
    def first(v: Annotated[int, Doc("first words")] = 1) -> int:
        return v

    @mb.block(output="b")
    def second(v: Annotated[int, Doc("second words")]) -> int:
        return v

    (spec,) = (first >> second).inputs
    assert spec.description == "first words"
    assert (spec.required, spec.default) == (False, 1)


def test_sequential_output_updating_an_input():
    @mb.block(output="x")
    def scale(x: int) -> int:
        return x * 10

    seq = f >> scale >> f.named("again")
    assert [s.name for s in seq.inputs] == ["x"]
    assert [s.name for s in seq.outputs] == ["y", "x"]
    final = seq.run(x=1)
    assert dict(final) == {"x": 10, "y": 11}


def test_sequential_outputs_in_order_of_first_production():
    class Two(NamedTuple):
        b: int
        a: int

    @mb.block(output="a")
    def make_a() -> int:
        return 1

    @mb.block
    def make_two() -> Two:
        return Two(2, 3)

    seq = make_a >> make_two
    assert [s.name for s in seq.outputs] == ["a", "b"]
    assert list(seq.run()) == ["a", "b"]


def test_sequential_type_mismatch_raises_wiring_error():
    @mb.block(output="latents")
    def prepare_latents(n: int) -> str:
        return "x"

    @mb.block(output="image")
    def denoise(latents: torch.Tensor) -> torch.Tensor:
        return latents

    with pytest.raises(
        WiringError, match=r"can't feed value `latents` from `prepare_latents` into `denoise`"
    ) as info:
        prepare_latents >> denoise
    err = info.value
    assert (err.name, err.producer, err.consumer) == ("latents", "prepare_latents", "denoise")
    text = str(err)
    assert "`prepare_latents` returns" in text
    assert "str" in text
    assert "`denoise` expects" in text
    assert "torch.Tensor" in text
    assert ".rename(" in text


def test_sequential_type_mismatch_uses_unique_names():
    @mb.block(output="y")
    def text(x: int) -> str:
        return ""

    with pytest.raises(WiringError) as info:
        f >> text >> g
    assert (info.value.producer, info.value.consumer) == ("text", "g")


def test_sequential_type_mismatch_detected_across_nesting():
    @mb.block(output="y")
    def text(x: int) -> str:
        return ""

    inner = (g >> h).named("inner")
    with pytest.raises(WiringError) as info:
        text >> inner
    assert info.value.producer == "text"
    assert info.value.name == "y"


def test_sequential_int_into_float_is_accepted():
    @mb.block(output="scale")
    def count(x: int) -> int:
        return x

    @mb.block(output="out")
    def use(scale: float) -> float:
        return scale / 2

    assert (count >> use).run(x=3)["out"] == 1.5


def test_sequential_last_producer_type_is_checked():
    @mb.block(output="y")
    def text(x: int) -> str:
        return "s"

    @mb.block(output="y")
    def number(y: str) -> int:
        return len(y)

    assert (f >> text >> number >> g).run(x=1)["z"] == 2
    with pytest.raises(WiringError):
        f >> number


def test_sequential_component_type_conflict():
    class Vae:
        pass

    class Unet:
        pass

    @mb.block(output="a")
    def one(model: mb.Component[Vae]) -> int:
        return 1

    @mb.block(output="b")
    def two(model: mb.Component[Unet]) -> int:
        return 2

    with pytest.raises(WiringError, match=r"component `model`") as info:
        one >> two
    err = info.value
    assert (err.name, err.producer, err.consumer) == ("model", "one", "two")
    assert "Vae" in str(err)
    assert "Unet" in str(err)


def test_sequential_component_shared_with_compatible_types():
    class Vae:
        pass

    class TinyVae(Vae):
        pass

    @mb.block(output="a")
    def one(vae: mb.Component[Vae]) -> int:
        return 1

    @mb.block(output="b")
    def two(vae: mb.Component[TinyVae], scale: mb.Config[float] = 0.5) -> int:
        return 2

    seq = one >> two
    assert [s.name for s in seq.components] == ["vae"]
    assert [s.name for s in seq.configs] == ["scale"]
    assert seq.inputs == ()


def test_sequential_component_and_config_of_one_name_conflict():
    @mb.block(output="a")
    def one(scale: mb.Component[float]) -> int:
        return 1

    @mb.block(output="b")
    def two(scale: mb.Config[float] = 1.0) -> int:
        return 2

    with pytest.raises(WiringError, match=r"`scale`") as info:
        one >> two
    assert (info.value.producer, info.value.consumer) == ("one", "two")


# -- editing ----------------------------------------------------------------------------------


def test_sequential_getitem_and_names():
    seq = f >> g >> h
    assert seq.names == ("f", "g", "h")
    assert seq["g"] is g


def test_sequential_getitem_unknown_suggests():
    seq = f >> g >> h
    with pytest.raises(KeyError, match=r"no sub-block `gg`.*Did you mean `g`"):
        seq["gg"]


def test_sequential_replace_keeps_old_name_and_original():
    seq = f >> g >> h

    @mb.block(output="z")
    def triple(y: int) -> int:
        return y * 3

    new = seq.replace("g", triple)
    assert new is not seq
    assert new.names == ("f", "g", "h")
    assert new["g"].__wrapped__ is triple.__wrapped__
    assert new.run(x=1)["w"] == 9
    assert seq["g"] is g
    assert seq.run(x=1)["w"] == 7


def test_sequential_replace_rewires():
    seq = f >> g >> h

    @mb.block(output="z")
    def from_x(x: int, extra: int) -> int:
        return x + extra

    new = seq.replace("g", from_x)
    assert [s.name for s in new.inputs] == ["x", "extra", "k"]
    assert [s.name for s in seq.inputs] == ["x", "k"]


def test_sequential_replace_checks_types():
    @mb.block(output="z")
    def wants_text(y: str) -> int:
        return 1

    with pytest.raises(WiringError):
        (f >> g >> h).replace("g", wants_text)


def test_sequential_insert_before_after_and_end():
    seq = f >> g >> h

    @mb.block(output="y")
    def tweak(y: int) -> int:
        return y + 100

    before = seq.insert(tweak, before="g")
    assert before.names == ("f", "tweak", "g", "h")
    assert before.run(x=1)["w"] == (2 + 100) * 2 + 3
    after = seq.insert(tweak, after="f", name="bump")
    assert after.names == ("f", "bump", "g", "h")
    assert after["bump"].__wrapped__ is tweak.__wrapped__
    at_end = seq.insert(tweak.rename(y="w"))
    assert at_end.names == ("f", "g", "h", "tweak")
    assert seq.names == ("f", "g", "h")
    assert seq.run(x=1)["w"] == 7


def test_sequential_insert_keeps_names_of_others():
    seq = f >> f >> g
    new = seq.insert(f, before="f_2")
    # The sub-blocks that were there keep the names they had (so a later `replace("f_2", ...)`
    # still edits the same sub-block); only the inserted one gets a fresh name.
    assert len(set(new.names)) == 4
    assert (new.names[0], new.names[2], new.names[3]) == ("f", "f_2", "g")
    assert new.names[1] not in {"f", "f_2", "g"}


def test_sequential_insert_unknown_anchor():
    with pytest.raises(KeyError, match=r"Did you mean `g`"):
        (f >> g).insert(h, before="gg")
    with pytest.raises(WiringError):
        (f >> g).insert(h, before="f", after="g")


def test_sequential_remove():
    seq = f >> g >> h
    new = seq.remove("g")
    assert new.names == ("f", "h")
    assert [s.name for s in new.inputs] == ["x", "z", "k"]
    assert seq.names == ("f", "g", "h")
    with pytest.raises(KeyError, match=r"no sub-block `q`"):
        seq.remove("q")


def test_sequential_editing_named_sequence_keeps_its_name():
    seq = (f >> g).named("pipe")
    assert seq.remove("g").name == "pipe"
    assert seq.insert(h).name == "pipe"
    assert seq.replace("g", g).name == "pipe"


# -- rename and bind --------------------------------------------------------------------------


def test_rename_reuses_one_block_for_two_values():
    @mb.block(output="latents")
    def encode(image: torch.Tensor) -> torch.Tensor:
        return image * 2

    both = encode >> encode.rename(image="mask_image", latents="mask_latents")
    assert [s.name for s in both.inputs] == ["image", "mask_image"]
    assert [s.name for s in both.outputs] == ["latents", "mask_latents"]
    assert both.names == ("encode", "encode_2")
    image, mask = torch.ones(2), torch.zeros(2)
    final = both.run(image=image, mask_image=mask)
    assert torch.equal(final["latents"], image * 2)
    assert torch.equal(final["mask_latents"], mask * 2)


def test_rename_block_keeps_function_and_original():
    renamed = f.rename(x="a", y="b")
    assert isinstance(renamed, mb.Block)
    assert [s.name for s in renamed.inputs] == ["a"]
    assert [s.name for s in renamed.outputs] == ["b"]
    assert renamed(a=1) == 2
    assert renamed.run(a=1) == {"a": 1, "b": 2}
    assert [s.name for s in f.inputs] == ["x"]
    assert renamed.name == "f"


def test_rename_twice_composes():
    twice = f.rename(x="a").rename(a="b")
    assert [s.name for s in twice.inputs] == ["b"]
    assert twice.run(b=1)["y"] == 2


def test_rename_sequence():
    seq = (f >> g).rename(x="start", z="end")
    assert [s.name for s in seq.inputs] == ["start"]
    assert [s.name for s in seq.outputs] == ["y", "end"]
    final = seq.run(start=1)
    assert dict(final) == {"start": 1, "y": 2, "end": 4}


def test_rename_named_sequence_in_a_chain():
    inner = (f >> g).named("inner").rename(z="y2")

    @mb.block(output="total")
    def add(y: int, y2: int) -> int:
        return y + y2

    seq = inner >> add
    assert seq.names == ("inner", "add")
    assert seq.run(x=1)["total"] == 2 + 4


def test_rename_does_not_shadow_other_values():
    """A renamed sequence reads its inner names only from their outer names."""
    seq = (f >> g).rename(x="a")
    final = seq.run(mb.State(x=100), a=1)
    assert final["y"] == 2
    assert final["x"] == 100


def test_rename_unknown_name_suggests():
    with pytest.raises(WiringError, match=r"can't rename `xx` of `f`.*Did you mean `x`") as info:
        f.rename(xx="a")
    assert info.value.name == "xx"
    with pytest.raises(WiringError, match=r"Did you mean `z`"):
        (f >> g).rename(zz="a")


def test_rename_unknown_on_anonymous_sequence_names_it_sensibly():
    with pytest.raises(WiringError) as info:
        (f >> g).rename(q="a")
    assert "`None`" not in str(info.value)
    assert info.value.consumer is not None


def test_rename_to_invalid_name():
    with pytest.raises(WiringError):
        f.rename(x="not valid")


def test_rename_two_outputs_to_one_name():
    class Two(NamedTuple):
        a: int
        b: int

    @mb.block
    def two() -> Two:
        return Two(1, 2)

    with pytest.raises(WiringError):
        two.rename(a="b")


def test_bind_block_removes_input_and_puts_value_in_state():
    bound = h.bind(k=10)
    assert isinstance(bound, mb.Block)
    assert [s.name for s in bound.inputs] == ["z"]
    assert bound(z=1) == 11
    final = bound.run(z=1)
    assert dict(final) == {"z": 1, "k": 10, "w": 11}
    assert [s.name for s in h.inputs] == ["z", "k"]


def test_bind_sequence():
    seq = (f >> g >> h).bind(x=1, k=5)
    assert seq.inputs == ()
    final = seq.run()
    assert final["w"] == 9
    assert final["x"] == 1
    assert final["k"] == 5


def test_bind_value_feeds_later_blocks():
    seq = h.bind(k=10) >> g.rename(y="k", z="doubled")
    assert [s.name for s in seq.inputs] == ["z"]
    assert seq.run(z=0)["doubled"] == 20


def test_bind_component_and_config():
    class Model:
        def __call__(self, x: int) -> int:
            return x * 7

    @mb.block(output="out")
    def apply(x: int, model: mb.Component[Model], scale: mb.Config[int] = 1) -> int:
        return model(x) * scale

    bound = apply.bind(model=Model(), scale=2)
    assert bound.components == ()
    assert bound.configs == ()
    assert bound.run(x=1)["out"] == 14
    seq = (f >> apply.rename(x="y")).bind(model=Model())
    assert seq.components == ()
    assert seq.run(x=1)["out"] == 14


def test_bind_unknown_name_suggests():
    with pytest.raises(WiringError, match=r"can't bind `kk` of `h`.*Did you mean `k`") as info:
        h.bind(kk=1)
    assert info.value.name == "kk"
    with pytest.raises(WiringError, match=r"Did you mean `x`"):
        (f >> g).bind(xx=1)


def test_bind_rejects_outputs():
    with pytest.raises(WiringError):
        f.bind(y=1)


def test_bind_value_is_not_copied():
    tensor = torch.zeros(2)

    @mb.block(output="same")
    def keep(t: torch.Tensor) -> torch.Tensor:
        return t

    final = keep.bind(t=tensor).run()
    assert final["t"] is tensor
    assert final["same"] is tensor


def test_rename_and_bind_leave_sequence_unchanged():
    seq = f >> g
    seq.rename(x="a")
    seq.bind(x=1)
    assert [s.name for s in seq.inputs] == ["x"]
    assert seq.run(x=1)["z"] == 4


def test_specs_of_generated_blocks_are_what_they_declare():
    spec = BlockSpec("f", ("a",), (("b", 3),), ("c", "a"), single=False, salt=1)
    blk = build_block(spec)
    assert [(s.name, s.required, s.default) for s in blk.inputs] == [
        ("a", True, mb.NOTHING),
        ("b", False, 3),
    ]
    assert [s.name for s in blk.outputs] == ["c", "a"]
    assert dict(blk.run(a=1)) == reference_run([spec], {"a": 1})


def test_wrapped_anonymous_sequences_get_string_names():
    @mb.block(output="y")
    def first(x: int) -> int:
        return x + 1

    @mb.block(output="z")
    def second(y: int) -> int:
        return y * 2

    @mb.block(output="w")
    def third(z: int) -> int:
        return z - 1

    bound = (first >> second).bind(x=1)
    seq = bound >> bound.rename(z="q") >> third
    assert seq.names == ("sequence", "sequence_2", "third")
    assert seq.run().w == 3


def test_insert_with_a_name_already_taken_is_a_wiring_error():
    seq = f >> g
    with pytest.raises(mb.WiringError, match=r"already has one.*another `name=`"):
        seq.insert(f, before="g", name="g")
    assert seq.insert(f, before="g").names == ("f", "f_2", "g")


def test_type_error_into_a_nested_node_names_the_block_that_reads_the_value():
    @mb.block(output="y")
    def make_text() -> str:
        return "a"

    @mb.block(output="z")
    def use_number(y: int, t: int) -> int:
        return y + t

    with pytest.raises(mb.WiringError) as info:
        make_text >> mb.loop(use_number, over="ts", name="denoise")
    assert "from `make_text` into `denoise > use_number`" in str(info.value)
    with pytest.raises(mb.WiringError, match=r"from `prep > make_text` into `use_number`"):
        (make_text >> g.rename(y="unused")).named("prep") >> use_number


def test_input_a_switch_may_skip_is_required_by_a_later_block_that_requires_it():
    @mb.block(output="out")
    def with_image(image: int) -> str:
        return "image"

    @mb.block(output="out")
    def with_extra(extra: int) -> str:
        return "extra"

    @mb.block(output="y")
    def after(out: str, extra: int) -> str:
        return f"{out} {extra}"

    seq = mb.switch({"image": with_image}, default=with_extra) >> after
    assert [(s.name, s.required) for s in seq.inputs] == [("image", False), ("extra", True)]
    with pytest.raises(mb.MissingInputError, match="extra"):
        seq.run(image=1)  # no default to hand `after`: reported before anything runs
    assert seq.run(image=1, extra=5).y == "image 5"


@given(switch_chains())
def test_sequential_with_switches_wires_like_the_reference(elements):
    seq = mb.Sequential([build_element(e) for e in elements])
    inputs, outputs = reference_switch_wiring(elements)
    assert {s.name: s.required for s in seq.inputs} == inputs
    assert [s.name for s in seq.outputs] == outputs


@given(switch_chains(), st.booleans())
def test_sequential_with_switches_runs_like_the_elements_one_by_one(elements, flag):
    seq = mb.Sequential([build_element(e) for e in elements])
    given_inputs = {s.name: 7 for s in seq.inputs if s.name != "flag"}
    if flag and "flag" in {s.name for s in seq.inputs}:
        given_inputs["flag"] = 1
    flag = "flag" in given_inputs
    values = dict(given_inputs)
    for element in elements:
        spec = (
            element
            if isinstance(element, BlockSpec)
            else (element.branch if flag else element.default)
        )
        if spec is None:
            continue
        args = {n: values[n] for n in spec.required}
        args |= {n: values.get(n, d) for n, d in spec.optional}
        values.update(zip(spec.writes, spec.compute(args), strict=True))
    assert dict(seq.run(**given_inputs)) == values
