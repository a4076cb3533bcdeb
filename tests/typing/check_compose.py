"""Checked by mypy --strict and pyright strict (never run): composing keeps node types."""

from typing import Any, assert_type

import modblocks as mb


@mb.block(output="y")
def f(x: int) -> int:
    return x + 1


@mb.block(output="z")
def g(y: int) -> int:
    return y * 2


seq = f >> g
assert_type(seq, mb.Sequential)
assert_type(seq >> f.rename(x="z", y="w"), mb.Sequential)
assert_type(mb.Sequential.from_dict({"first": f, "second": g}), mb.Sequential)
assert_type(seq["f"], mb.Node)
assert_type(seq.names, tuple[str, ...])
assert_type(mb.switch({"x": f}, default=g), mb.Switch)
assert_type(mb.loop(seq, over="xs"), mb.Loop)
assert_type(seq.run(x=1), mb.State)
assert_type(seq(x=1), mb.State)
state = seq.run(x=1)
assert_type(state["z"], Any)
assert_type(state.evolve(z=3), mb.State)


def on_step(step: mb.Step) -> dict[str, Any] | None:
    return {"y": step.index}


mb.loop(seq, over="xs", on_step=on_step)
mb.loop(seq, over=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
seq.insert(f, before=1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
