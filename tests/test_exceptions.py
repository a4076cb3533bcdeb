"""`modblocks.exceptions`: one class per failure, each a `ModblocksError` and a builtin."""

import inspect
import pickle

import attrs
import pytest

import modblocks as mb
from modblocks import exceptions

BASES = {
    "DefinitionError": TypeError,
    "WiringError": TypeError,
    "MissingInputError": TypeError,
    "UnknownInputError": TypeError,
    "OutputError": TypeError,
    "BlockError": RuntimeError,
    "CancelledError": RuntimeError,
    "MapError": RuntimeError,
    "PathError": (KeyError, ValueError),
    "InputTypeError": (TypeError, ValueError),
    "UnknownOutputError": KeyError,
    "FrozenStateError": (attrs.exceptions.FrozenInstanceError, AttributeError, TypeError),
    "BlockPicklingError": pickle.PicklingError,
    "CacheKeyError": ValueError,
    "UnknownValueError": (KeyError, AttributeError),
    "LoadError": OSError,
    "UntrustedCodeError": PermissionError,
    "BlocksChangedError": ValueError,
}
WARNINGS = {"DefaultsWarning": UserWarning}

FIELDS = {
    "DefinitionError": {"function": "f", "parameter": "args"},
    "WiringError": {"name": "latents", "producer": "prepare", "consumer": "denoise"},
    "MissingInputError": {"node": "pipe", "names": ("a", "b"), "path": "pipe", "state": None},
    "UnknownInputError": {"node": "pipe", "names": ("promt",)},
    "OutputError": {"block": "f", "path": "pipe > f", "state": mb.State(x=1)},
    "BlockError": {"block": "unet", "path": "a > b[step 2] > unet", "state": mb.State(x=1)},
    "CancelledError": {"path": "a > loop", "state": mb.State(x=1)},
    "PathError": {"path": "a > nope", "node": "a"},
    "InputTypeError": {"node": "a", "name": "x", "expected": int, "path": "a", "state": None},
    "UnknownOutputError": {"node": "pipe", "names": ("image",), "state": None},
    "FrozenStateError": {"name": "x"},
    "BlockPicklingError": {"block": "f", "qualname": "m.<locals>.f"},
    "CacheKeyError": {"path": "a > f", "state": mb.State(x=1)},
    "UnknownValueError": {"name": "latent"},
    "LoadError": {"path": "folder/unet"},
    "UntrustedCodeError": {"path": "blocks", "hash": "sha256:ab12"},
    "BlocksChangedError": {"path": "blocks", "expected": "sha256:ab12", "found": "sha256:cd34"},
}

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(exceptions, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == exceptions.__name__
]


def test_exceptions_module_lists_every_class():
    assert sorted(exceptions.__all__) == sorted(cls.__name__ for cls in ERROR_CLASSES)
    assert set(BASES) | set(WARNINGS) | {"ModblocksError"} == set(exceptions.__all__)


def test_exceptions_are_exported_from_the_package():
    for name in exceptions.__all__:
        assert getattr(mb, name) is getattr(exceptions, name)


def test_modblocks_error_is_an_exception():
    assert issubclass(mb.ModblocksError, Exception)
    assert inspect.getdoc(mb.ModblocksError)


@pytest.mark.parametrize("name", list(BASES))
def test_exception_bases(name):
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.ModblocksError)
    bases = BASES[name] if isinstance(BASES[name], tuple) else (BASES[name],)
    assert all(issubclass(cls, base) for base in bases)
    assert inspect.getdoc(cls)


@pytest.mark.parametrize("name", list(WARNINGS))
def test_warning_bases(name):
    cls = getattr(exceptions, name)
    assert issubclass(cls, WARNINGS[name])
    assert inspect.getdoc(cls)


def test_key_errors_print_their_message_unquoted():
    # KeyError's own str() repr-quotes its argument; ours read as written.
    assert str(exceptions.PathError("no sub-block `x`.")) == "no sub-block `x`."


@pytest.mark.parametrize("name", list(FIELDS))
def test_exception_message_is_sole_argument_and_fields_are_attributes(name):
    cls = getattr(exceptions, name)
    err = cls("block `f` went wrong.", **FIELDS[name])
    assert err.args == ("block `f` went wrong.",)
    assert str(err) == "block `f` went wrong."
    for field, value in FIELDS[name].items():
        assert getattr(err, field) is value


@pytest.mark.parametrize("name", list(FIELDS))
def test_exception_fields_have_defaults(name):
    err = getattr(exceptions, name)("message")
    for field in FIELDS[name]:
        assert hasattr(err, field)


@pytest.mark.parametrize("name", ["ModblocksError", *FIELDS])
def test_exception_pickles(name):
    cls = getattr(exceptions, name)
    fields = FIELDS.get(name, {})
    err = cls("block `f` went wrong.", **fields)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls
    assert clone.args == err.args
    assert str(clone) == str(err)
    for field, value in fields.items():
        got = getattr(clone, field)
        if isinstance(value, mb.State):
            assert dict(got) == dict(value)
        else:
            assert got == value


def test_exception_pickle_keeps_cause_out_but_message_whole():
    err = exceptions.BlockError("block `unet` raised ValueError: nan.", block="unet")
    err.__cause__ = ValueError("nan")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == "block `unet` raised ValueError: nan."
    assert clone.block == "unet"


def test_exceptions_caught_as_builtins():
    def f(*args: int) -> None:
        pass

    with pytest.raises(TypeError):
        mb.block(f)

    @mb.block(output="y")
    def boom(x: int) -> int:
        raise ValueError

    with pytest.raises(RuntimeError):
        boom.run(x=1)
    with pytest.raises(mb.ModblocksError):
        boom.run(x=1)
