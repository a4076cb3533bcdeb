"""`mb.switch`: choose a branch at run time, like diffusers' AutoPipelineBlocks.

Three tiny workflows share their output `latents`. With triggers the first branch whose
input is given (and not None) runs; with `select=` a plain function picks the branch by name.
`resolve` shows which node would run, like diffusers' `get_execution_blocks`.
"""

import torch

import modblocks as mb


@mb.block(output="latents")
def text2img_latents(batch_size: int = 1) -> torch.Tensor:
    """Start from pure noise."""
    return torch.randn(batch_size, 4, 8, 8)


@mb.block(output="latents")
def img2img_latents(image: torch.Tensor, strength: float = 0.8) -> torch.Tensor:
    """Start from the image, partly noised."""
    return (1 - strength) * image + strength * torch.randn_like(image)


@mb.block(output="latents")
def inpaint_latents(image: torch.Tensor, mask_image: torch.Tensor) -> torch.Tensor:
    """Noise only where the mask is set."""
    return torch.where(mask_image > 0, torch.randn_like(image), image)


prepare = mb.switch(
    {"mask_image": inpaint_latents, "image": img2img_latents},
    default=text2img_latents,
    name="prepare",
)


def by_strength(strength: float = 1.0) -> str | None:
    """Pick a branch from a value of the state (None: skip the switch)."""
    return "text2img" if strength >= 1.0 else "img2img"


chosen = mb.switch(
    {"img2img": img2img_latents, "text2img": text2img_latents}, select=by_strength, name="chosen"
)

if __name__ == "__main__":
    print(repr(prepare))
    print()
    print(prepare.doc)
    print()

    image = torch.zeros(1, 4, 8, 8)
    print(prepare.resolve().name, prepare.resolve(image=image).name)
    print(prepare.resolve(image=image, mask_image=image).name)
    state = prepare.run(image=image, strength=0.5)
    print(sorted(state), tuple(state.latents.shape))
    print()

    print(chosen.description)
    print(chosen.resolve(strength=0.3).name, chosen.resolve().name)
