"""Wiring rules: which values feed which blocks, and which types fit when composing.

`>>` wires by name and checks each connection's types once, when composing. The checks
follow PEP 484's rules loosely: subclasses, `Optional`, `Union`, `int` for `float`, generic
origins with their type arguments ignored, and `Any` or unresolvable hints always pass.
"""

from typing import Any

import modblocks as mb


@mb.block(output="steps")
def count(n: int) -> int:
    """Produce an int."""
    return n


@mb.block(output="scale")
def as_float(steps: float) -> float:
    """Read it where a float is expected (int fits float, PEP 484)."""
    return steps / 2


@mb.block(output="label")
def maybe(steps: int | None = None) -> str:
    """Read it as an optional int."""
    return f"{steps} steps"


@mb.block(output="items")
def listed(n: int) -> list[int]:
    """Produce a list of ints."""
    return list(range(n))


@mb.block(output="total")
def summed(items: list[float], steps: Any) -> float:
    """Read a list of floats: the type arguments of generics are not compared."""
    return sum(items) + steps


@mb.block(output="text")
def needs_text(steps: str) -> str:
    """Expect a str where an int is produced."""
    return steps


if __name__ == "__main__":
    fine = count >> as_float >> maybe >> listed >> summed
    print([(s.name, s.required) for s in fine.inputs], [s.name for s in fine.outputs])
    print(dict(fine.run(n=4)))
    print()
    try:
        count >> needs_text
    except mb.WiringError as err:
        print(f"{type(err).__name__}: {err}")
        print(err.producer, err.consumer, err.name)
