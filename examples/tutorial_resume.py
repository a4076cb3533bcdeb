"""Resume, cancel and edit by path: a run goes on exactly where it stopped.

A failure inside a loop inside a switch, resumed twice from the same error; a cancelled run
resumed from its error's path; the same through a `Pipeline`; and a block inserted after a
step of that loop with one line.
"""

import modblocks as mb

FAILING = {"step": None}


@mb.block(output="latents")
def prepare(seed: int) -> float:
    """Start from the seed."""
    return float(seed)


@mb.block(output="latents")
def denoise_step(latents: float, i: int) -> float:
    """Halve the latents, plus the step number; fails at the step in FAILING."""
    if FAILING["step"] == i:
        msg = "CUDA out of memory (simulated)"
        raise RuntimeError(msg)
    return latents / 2 + i


@mb.block(output="images")
def decode(latents: float) -> str:
    """Show the final latents."""
    return f"image({latents:.4f})"


denoise = mb.loop(denoise_step, over="timesteps", name="denoise", progress=False)
text2img = (prepare >> denoise >> decode).named("text2img")
img2img = (prepare.rename(seed="image") >> denoise >> decode).named("img2img")
auto = mb.switch({"image": img2img}, default=text2img, name="auto")
INPUTS = {"seed": 16, "timesteps": [999, 749, 499, 249, 0]}

if __name__ == "__main__":
    expected = auto.run(**INPUTS)["images"]

    # A failure: the path names the loop step, the state is everything computed before it.
    FAILING["step"] = 3
    try:
        auto.run(**INPUTS)
    except mb.BlockError as err:
        failed = err
    FAILING["step"] = None
    print(failed.path)
    print(failed.path.segments)
    print(dict(failed.state))
    # Resume through the switch and into the loop at step 3, as often as needed.
    print(auto.run(failed.state, resume=failed.path)["images"], expected)
    print(auto.run(failed.state, resume=failed.path)["images"])

    # A cancel: the path names the first step that did not run.
    token = mb.CancelToken()

    def stop_after_step_1(step: mb.Step) -> None:
        if step.index == 1:
            token.cancel()

    try:
        auto.run(**INPUTS, cancel=token, on_step=stop_after_step_1)
    except mb.CancelledError as err:
        cancelled = err
    print()
    print(cancelled.path)
    print(auto.run(cancelled.state, resume=cancelled.path)["images"])

    # The same through a pipeline.
    pipe = mb.Pipeline(auto, inference_mode=False)
    FAILING["step"] = 0
    try:
        pipe(**INPUTS)
    except mb.BlockError as err:
        failed = err
    FAILING["step"] = None
    print()
    print(failed.path, pipe.run(failed.state, resume=failed.path)["images"])

    # Editing by path: a block after the loop's step, inside one branch of the switch.
    @mb.block(output="latents")
    def clamp(latents: float) -> float:
        """Keep the latents in [0, 4]."""
        return min(4.0, max(0.0, latents))

    clamped = auto.insert(clamp, after="text2img > denoise > denoise_step")
    print()
    print(clamped["text2img > denoise"].names, auto["text2img > denoise"].names)
    print(clamped.run(**INPUTS)["images"])
