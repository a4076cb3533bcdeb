"""Checked by mypy --strict and pyright strict (never run): blocks keep their types."""

from typing import NamedTuple, assert_type

import modblocks as mb


class Vae:
    pass


class Latents(NamedTuple):
    batch_size: int
    latents: list[float]


@mb.block
def encode(
    image: list[float], batch_size: int, vae: mb.Component[Vae], scale: mb.Config[float] = 0.18
) -> Latents:
    return Latents(batch_size * 2, [x * scale for x in image])


@mb.block(output="doubled")
def double(x: int) -> int:
    return 2 * x


@mb.block
def decode(latents: list[float], vae: mb.Component[Vae]) -> None:
    pass


assert_type(encode([1.0], 2, Vae()), Latents)
assert_type(encode([1.0], 2, vae=Vae(), scale=0.5), Latents)
assert_type(double(3), int)
assert_type(encode >> decode, mb.Sequential)
assert_type(encode.run(image=[1.0], batch_size=2, vae=Vae()), mb.State)
assert_type(encode.rename(image="pixels")(pixels=[1.0], batch_size=2, vae=Vae()), Latents)
assert_type(double.bind(x=2)(), int)

encode([1.0], "2", Vae())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
encode([1.0], 2, vae=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
double(1, z=3)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
x: str = double(3)  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]

assert_type(encode.__name__, str)
assert_type(encode.__qualname__, str)
assert_type(encode.__module__, str)
assert_type(encode.__doc__, str | None)
assert_type(encode.name, str)
assert_type(encode.inputs, tuple[mb.InputSpec, ...])
