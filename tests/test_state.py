"""`mb.State`: a frozen mapping, copied forward by runs, sharing (never copying) its values."""

import collections.abc
import copy
import pickle
from typing import NamedTuple

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modblocks as mb
from tests.strategies import (
    build_block,
    chains,
    identifiers,
    inputs_for,
    plain_values,
    value_dicts,
)

# Random chains give one input different defaults on purpose: the reference model covers it.
pytestmark = pytest.mark.filterwarnings("ignore::modblocks.DefaultsWarning")


def test_state_is_a_mapping():
    state = mb.State({"a": 1}, b=2)
    assert isinstance(state, collections.abc.Mapping)
    assert state["a"] == 1
    assert state["b"] == 2
    assert "a" in state
    assert "z" not in state
    assert len(state) == 2
    assert list(state) == ["a", "b"]
    assert list(state.keys()) == ["a", "b"]
    assert list(state.values()) == [1, 2]
    assert list(state.items()) == [("a", 1), ("b", 2)]
    assert dict(state) == {"a": 1, "b": 2}
    assert state == {"a": 1, "b": 2}  # Mapping equality with a dict


def test_state_keyword_values_follow_the_mapping():
    state = mb.State({"a": 1, "b": 2}, b=3, c=4)
    assert list(state.items()) == [("a", 1), ("b", 3), ("c", 4)]


def test_state_empty():
    state = mb.State()
    assert len(state) == 0
    assert list(state) == []
    assert repr(state) == "State()"


def test_state_missing_item_raises_key_error():
    with pytest.raises(KeyError):
        mb.State(a=1)["b"]


def test_state_attribute_access():
    state = mb.State(prompt="a cat", steps=3)
    assert state.prompt == "a cat"
    assert state.steps == 3


def test_state_missing_attribute_suggests_close_name():
    state = mb.State(prompt="a cat", steps=3)
    with pytest.raises(AttributeError, match=r"no value `promt`.*Did you mean `prompt`\?") as info:
        state.promt
    assert info.value.name == "promt"
    assert isinstance(info.value, mb.UnknownValueError)  # as `state["promt"]` raises
    with pytest.raises(AttributeError, match=r"no value `zzz`") as info:
        state.zzz
    assert "Did you mean" not in str(info.value)


def test_state_hasattr_and_getattr_default():
    state = mb.State(a=1)
    assert hasattr(state, "a")
    assert not hasattr(state, "b")
    assert getattr(state, "b", 5) == 5


def test_state_names_that_collide_with_methods_are_items():
    state = mb.State(keys=1, get=2, items=3)
    assert state["keys"] == 1
    assert state["get"] == 2
    assert callable(state.keys)
    assert list(state.keys()) == ["keys", "get", "items"]


def test_state_get():
    state = mb.State(a=1, n=None)
    assert state.get("a") == 1
    assert state.get("b") is None
    assert state.get("b", 7) == 7
    assert state.get("n", 7) is None  # None is a value, not an absence


def test_state_is_frozen():
    state = mb.State(a=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        state.a = 2
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        state.b = 2
    with pytest.raises(TypeError):
        state["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del state["a"]  # type: ignore[attr-defined]
    assert dict(state) == {"a": 1}


def test_state_does_not_follow_the_mapping_it_was_built_from():
    source = {"a": 1}
    state = mb.State(source)
    source["a"] = 2
    source["b"] = 3
    assert dict(state) == {"a": 1}


def test_state_evolve_returns_a_new_state():
    state = mb.State(a=1, b=2)
    new = state.evolve(b=3, c=4)
    assert isinstance(new, mb.State)
    assert new is not state
    assert dict(new) == {"a": 1, "b": 3, "c": 4}
    assert list(new) == ["a", "b", "c"]
    assert dict(state) == {"a": 1, "b": 2}
    assert dict(state.evolve({"a": 0}, b=5)) == {"a": 0, "b": 5}


@given(value_dicts, value_dicts)
def test_state_evolve_leaves_original_unchanged(original, changes):
    state = mb.State(original)
    before = list(state.items())
    new = state.evolve(changes)
    assert list(state.items()) == before
    assert dict(new) == {**original, **changes}
    assert list(new) == list({**original, **changes})


@given(value_dicts)
def test_state_mapping_protocol_matches_dict(values):
    state = mb.State(values)
    assert len(state) == len(values)
    assert list(state) == list(values)
    assert list(state.items()) == list(values.items())
    for key in values:
        assert key in state
        assert state[key] is values[key]
        assert state.get(key, object()) is values[key]


@given(value_dicts, identifiers, plain_values)
def test_state_evolve_one_value(values, name, value):
    state = mb.State(values)
    new = state.evolve(**{name: value})
    assert new[name] is value
    assert state.get(name, "absent") == values.get(name, "absent")


def test_state_shares_values_not_copies():
    tensor = torch.zeros(3)
    items = [1, 2]
    state = mb.State(x=tensor, items=items)
    assert state["x"] is tensor
    assert state.x is tensor
    new = state.evolve(y=1)
    assert new["x"] is tensor
    assert new["items"] is items


def test_state_values_are_shared_through_a_run():
    class Out(NamedTuple):
        doubled: torch.Tensor
        same: torch.Tensor

    @mb.block
    def double(x: torch.Tensor) -> Out:
        return Out(x * 2, x)

    @mb.block(output="last")
    def keep(same: torch.Tensor) -> torch.Tensor:
        return same

    tensor = torch.ones(2)
    start = mb.State(x=tensor)
    final = (double >> keep).run(start)
    assert final["x"] is tensor
    assert final["same"] is tensor
    assert final["last"] is tensor
    assert dict(start) == {"x": tensor}  # the state passed in is unchanged


def test_state_run_returns_new_state_and_leaves_input_state_unchanged():
    @mb.block(output="x")
    def bump(x: int) -> int:
        return x + 1

    start = mb.State(x=1, other="kept")
    final = bump.run(start)
    assert final is not start
    assert dict(start) == {"x": 1, "other": "kept"}
    assert dict(final) == {"x": 2, "other": "kept"}


def test_state_order_is_inputs_then_outputs_in_production_order():
    class Two(NamedTuple):
        second: int
        first: int

    @mb.block(output="zeta")
    def a(alpha: int) -> int:
        return 1

    @mb.block
    def b(zeta: int) -> Two:
        return Two(2, 3)

    @mb.block(output="alpha")
    def c(first: int) -> int:
        return 4

    final = (a >> b >> c).run(alpha=0)
    assert list(final) == ["alpha", "zeta", "second", "first"]
    assert final["alpha"] == 4  # an output updates an input in place


def test_state_repr_summarises_tensors():
    state = mb.State(latents=torch.zeros(2, 4, 8, 8), prompt="a cat", n=3)
    text = repr(state)
    assert "latents" in text
    assert "shape=(2, 4, 8, 8)" in text
    assert "torch.float32" in text
    assert "tensor(" not in text  # the values themselves are not printed
    assert "'a cat'" in text
    assert "n=3" in text


def test_state_repr_summarises_long_values():
    state = mb.State(text="x" * 500, many=list(range(1000)))
    text = repr(state)
    assert len(text) < 300
    assert "len=500" in text
    assert "len=1000" in text


def test_state_repr_summarises_lists_of_tensors():
    state = mb.State(images=[torch.zeros(3, 64, 64) for _ in range(4)])
    text = repr(state)
    assert "shape=(3, 64, 64)" in text
    assert "len=4" in text
    assert len(text) < 200


def test_state_equality_does_not_compare_tensors_elementwise():
    tensor = torch.zeros(3)
    state = mb.State(x=tensor)
    assert state == mb.State(x=tensor)  # the same objects: equal (Mapping equality, identity)


def test_state_pickles():
    state = mb.State(a=1, b=[1, 2], t=torch.arange(3))
    clone = pickle.loads(pickle.dumps(state))
    assert isinstance(clone, mb.State)
    assert list(clone) == ["a", "b", "t"]
    assert clone["b"] == [1, 2]
    assert torch.equal(clone["t"], torch.arange(3))


@given(value_dicts)
def test_state_pickle_round_trip_keeps_items(values):
    clone = pickle.loads(pickle.dumps(mb.State(values)))
    assert list(clone.items()) == list(values.items())


def test_state_copy_is_a_state():
    state = mb.State(a=[1])
    shallow = copy.copy(state)
    deep = copy.deepcopy(state)
    assert dict(shallow) == {"a": [1]}
    assert shallow["a"] is state["a"]
    assert dict(deep) == {"a": [1]}
    assert deep["a"] is not state["a"]


@given(st.dictionaries(identifiers, st.integers(), max_size=5))
def test_state_of_state_copies_values(values):
    state = mb.State(values)
    again = mb.State(state)
    assert dict(again) == values
    assert again is not state


@given(chains(), st.data())
def test_state_passed_to_a_run_is_never_changed(specs, data):
    seq = mb.Sequential([build_block(s) for s in specs])
    start = mb.State(data.draw(inputs_for(specs)), extra=object())
    before = list(start.items())
    final = seq.run(start)
    assert list(start.items()) == before
    assert all(start[name] is value for name, value in before)
    assert final is not start
    assert final["extra"] is start["extra"]  # shared, not copied


def test_state_names_are_strings():
    with pytest.raises(mb.InputTypeError, match="names its values with strings, not 1, None"):
        mb.State({1: 2, None: 3})  # type: ignore[dict-item]


def test_state_says_how_to_change_it():
    state = mb.State(a=1)
    with pytest.raises(mb.FrozenStateError, match=r"state.evolve\(a=...\)") as info:
        state.a = 2
    assert isinstance(info.value, attrs.exceptions.FrozenInstanceError)
    with pytest.raises(mb.FrozenStateError, match=r"evolve\(\{'a': ...\}\)") as info:
        state["a"] = 2  # type: ignore[index]
    assert isinstance(info.value, TypeError)
    assert state.evolve(a=2)["a"] == 2
    assert state["a"] == 1


def test_state_names_the_closest_value_when_one_is_missing():
    state = mb.State(latents=1, images=2)
    with pytest.raises(mb.UnknownValueError, match=r"no value `latent`\. Did you mean `latents`"):
        state["latent"]
    with pytest.raises(mb.UnknownValueError, match="Did you mean `images`") as info:
        state.image
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, AttributeError)
    assert (state.get("image"), getattr(state, "image", 0), hasattr(state, "image")) == (
        None,
        0,
        False,
    )
