"""The `compose.py` example written with diffusers' Modular Diffusers, for comparison.

Two `ModularPipelineBlocks` classes declare their inputs and outputs as `InputParam` /
`OutputParam` lists and read and write a `BlockState`; `SequentialPipelineBlocks` composes
them. `compose.py` is the same pipeline in modblocks: two functions and `from_dict`.
"""

import torch
from diffusers.modular_pipelines import (
    InputParam,
    InsertableDict,
    ModularPipelineBlocks,
    OutputParam,
    PipelineState,
    SequentialPipelineBlocks,
)


# --8<-- [start:blocks]
class InputBlock(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Count how many images one call makes."

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam(
                name="prompt",
                type_hint=list,
                required=True,
                description="the prompt or prompts to guide generation",
            ),
            InputParam(
                name="num_images_per_prompt",
                type_hint=int,
                default=1,
                description="images to make for each prompt",
            ),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam(
                name="batch_size",
                type_hint=int,
                description="number of prompts times images per prompt",
            )
        ]

    def __call__(self, components: object, state: PipelineState) -> tuple[object, PipelineState]:
        block_state = self.get_block_state(state)
        prompt = block_state.prompt
        prompts = [prompt] if isinstance(prompt, str) else prompt
        block_state.batch_size = len(prompts) * block_state.num_images_per_prompt
        self.set_block_state(state, block_state)
        return components, state


class ImageEncoderBlock(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Encode a raw image into latents, doubling the batch for classifier-free guidance."

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam(
                name="image",
                type_hint=torch.Tensor,
                required=True,
                description="raw input image to process",
            ),
            InputParam(name="batch_size", type_hint=int),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam(
                name="batch_size", type_hint=int, description="batch size after duplication"
            ),
            OutputParam(
                name="image_latents",
                type_hint=torch.Tensor,
                description="latents representing the image",
            ),
        ]

    def __call__(self, components: object, state: PipelineState) -> tuple[object, PipelineState]:
        block_state = self.get_block_state(state)
        batch_size = block_state.batch_size * 2
        image = block_state.image
        block_state.image_latents = image.mean(dim=0, keepdim=True).repeat(batch_size, 1, 1, 1)
        block_state.batch_size = batch_size
        self.set_block_state(state, block_state)
        return components, state


blocks = SequentialPipelineBlocks.from_blocks_dict(
    InsertableDict([("input", InputBlock), ("image_encoder", ImageEncoderBlock)])
)
# --8<-- [end:blocks]

if __name__ == "__main__":
    print(blocks.doc)
    pipe = blocks.init_pipeline()
    batch_size, latents = pipe(
        prompt=["a cat", "a dog"], image=torch.rand(3, 8, 8), output=["batch_size", "image_latents"]
    ).values()
    print(batch_size, tuple(latents.shape))
