"""`mb.loop`: the denoising loop, with step callbacks, early stop, streaming and resume.

The body runs once per element of `timesteps`; what it outputs (`latents`) is carried into
the next step. A step callback sees each step and can change values or stop the loop;
`stream` yields a state per step; a run that fails keeps its last good state, and
`run(err.state, resume=err.path)` goes on from the failed step.
"""

from typing import Any

import modblocks as mb


@mb.block(output="timesteps")
def set_timesteps(num_inference_steps: int = 4) -> list[int]:
    """Count down from 1000 in equal steps."""
    return [1000 - k * 1000 // num_inference_steps for k in range(num_inference_steps)]


@mb.block(output="latents")
def step(latents: float, t: int) -> float:
    """One denoising step: halve the distance to zero (a stand-in for unet + scheduler)."""
    return latents / 2 if t > 0 else latents


@mb.block(output="images")
def decode(latents: float) -> str:
    """Show the final latents."""
    return f"image({latents:g})"


denoise = mb.loop(step, over="timesteps", name="denoise")
text2img = (set_timesteps >> denoise >> decode).named("text2img")

if __name__ == "__main__":
    print(repr(text2img))
    print(text2img.run(latents=16.0)["images"])
    print()

    # A step callback sees each step (diffusers' callback_on_step_end) ...
    def show(s: mb.Step) -> None:
        print(f"{s.path} step {s.index + 1}/{s.total} t={s.item} latents={s.state.latents:g}")

    text2img.run(latents=16.0, on_step=show)

    # ... returns values to change before the next step, or stops the loop early.
    def boost_then_stop(s: mb.Step) -> dict[str, Any] | None:
        if s.index == 1:
            s.stop()  # the loop ends after this step; `decode` still runs
        return {"latents": s.state.latents * 10} if s.index == 0 else None

    print(text2img.run(latents=16.0, on_step=boost_then_stop)["images"])
    print()

    # Streaming: a state after each step, then the final state.
    for state in text2img.stream(latents=16.0):
        print(state.latents, state.get("images"))
    print()

    # Resume after a failure: the error keeps the path and the last good state.
    calls = {"n": 0}

    @mb.block(output="latents")
    def flaky_step(latents: float, i: int) -> float:
        """Fail once, at step 2 (a transient error)."""
        calls["n"] += 1
        if i == 2 and calls["n"] == 3:
            msg = "CUDA out of memory (simulated)"
            raise RuntimeError(msg)
        return latents / 2

    flaky = text2img.replace("denoise", mb.loop(flaky_step, over="timesteps"))
    try:
        flaky.run(latents=16.0)
    except mb.BlockError as err:
        print(err.path)
        print(err.state.latents)
        print(flaky.run(err.state, resume=err.path)["images"])
    print()

    # Progress bars: shown for loops of 10 steps or more where the output is a terminal;
    # configure them for every loop at once, or per loop.
    with mb.progress(disable=True):
        text2img.run(latents=16.0, num_inference_steps=50)
    quiet = mb.loop(step, over="timesteps", name="denoise", progress=False)
    print(quiet.run(latents=1.0, timesteps=list(range(20)))["latents"])
