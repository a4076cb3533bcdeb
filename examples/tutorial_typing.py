"""What type checkers see: a block keeps its function's signature and return type.

`mb.Component[T]` and `mb.Config[T]` are `Annotated[T, marker]`, so mypy and pyright see a
plain `T`. `assert_type` calls pass under both checkers (and do nothing at run time).
"""

from __future__ import annotations

import inspect
from typing import Annotated, NamedTuple, assert_type

from typing_extensions import Doc

import modblocks as mb


class Vae:
    """Any class can be a component type."""

    scale = 0.5


class Encoded(NamedTuple):
    latents: Annotated[list[float], Doc("the encoded image")]


@mb.block
def encode(
    image: Annotated[list[float], Doc("pixel values")],
    vae: mb.Component[Vae],
    boost: mb.Config[float] = 1.0,
) -> Encoded:
    """Encode an image."""
    return Encoded([x * vae.scale * boost for x in image])


@mb.block(output="images")
def decode(latents: list[float]) -> str:
    """Decode latents."""
    return repr(latents)


if __name__ == "__main__":
    # Calls are checked against the function's own signature: `encode([1.0], vae="x")` and
    # `encode([1.0], Vae(), boost="high")` are errors for mypy and pyright.
    result = encode([1.0, 2.0], Vae())
    assert_type(result, Encoded)
    assert_type(encode >> decode, mb.Sequential)
    print(result, list(inspect.signature(encode).parameters))
    print(encode.__name__, encode.__doc__)
    # Under `from __future__ import annotations` the hints are strings; modblocks resolves
    # them (here, in the module's globals) when decorating.
    print([(s.name, s.type, s.description) for s in encode.inputs + encode.components])
