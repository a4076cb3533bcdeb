"""ControlNet for SD 1.x and SDXL: two blocks added to the ready-made nodes.

`prepare_control_image` turns `control_image` into the ControlNet's input (resized,
repeated per image, twice with guidance) and sets the image size from it, as diffusers'
ControlNet pipelines do; it runs after the prompt encoding, before the size or the init image
is prepared. Inside the denoising loop, `controlnet_residuals` (`controlnet_residuals_xl`)
runs the ControlNet before the noise prediction, which adds its residuals to the UNet's
(`predict_noise` takes them). The rest of each node is unchanged: text-to-image,
image-to-image (`image`) and inpainting (`image`, `mask_image`) are chosen as in
`stable_diffusion`, and `control_image` is the ControlNet's input in every mode.

With the component `controlnet` a `ControlNetModel`, or a `MultiControlNetModel` with one
control image, scale, start and end per ControlNet, the nodes give the images of diffusers'
`StableDiffusionControlNetPipeline`, `...ControlNetImg2ImgPipeline`,
`...ControlNetInpaintPipeline` and their SDXL counterparts. Without `height` and `width`
the size is the control image's (diffusers' ControlNet text-to-image does the same; its
image-to-image and inpainting pipelines take the init image's own size, which must then equal
the control image's anyway). Defaults follow each of diffusers' ControlNet pipelines, which
differ: `controlnet_conditioning_scale` is 1.0 for text-to-image, 0.8 (and `strength` 0.8) for
image-to-image, 0.5 for SD inpainting; SDXL ControlNet inpainting guides with 5.0, not 7.5.

Examples:
    ```python
    import PIL.Image
    from modblocks.diffusion import stable_diffusion_controlnet
    from modblocks.diffusion.testing import tiny_sd_components
    from modblocks.diffusion.testing_adapters import tiny_controlnet

    components = tiny_sd_components()
    state = stable_diffusion_controlnet.run(
        **components,
        controlnet=tiny_controlnet(components),
        prompt="a cat",
        control_image=PIL.Image.new("RGB", (32, 32)),
        num_inference_steps=2,
    )
    ```
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple, cast

import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._edit import edit_denoise, edit_sequences
from ._grad import no_grad
from ._scheduler import typed
from .families.sd import stable_diffusion
from .families.sdxl import stable_diffusion_xl
from .vae import vae_scale_factor

__all__ = [
    "ControlImage",
    "ControlNet",
    "ControlResiduals",
    "Img2ImgControlDefaults",
    "controlnet_residuals",
    "controlnet_residuals_xl",
    "img2img_control_defaults",
    "inpaint_control_guidance_scale",
    "inpaint_controlnet_scale",
    "prepare_control_image",
    "stable_diffusion_controlnet",
    "stable_diffusion_xl_controlnet",
    "with_controlnet",
]

ControlNet = ControlNetModel | MultiControlNetModel
Floats = float | list[float]


@functools.cache
def _processor(scale_factor: int) -> VaeImageProcessor:
    # RGB in [0, 1]: ControlNets take the image as it is, not normalized like the VAE's input.
    processor: VaeImageProcessor = VaeImageProcessor(
        vae_scale_factor=scale_factor, do_convert_rgb=True, do_normalize=False
    )
    return processor


def _nets(controlnet: ControlNet) -> list[ControlNetModel]:
    if isinstance(controlnet, MultiControlNetModel):
        return [cast("ControlNetModel", net) for net in controlnet.nets]
    return [controlnet]


class ControlImage(NamedTuple):
    """The ControlNet's input, and the image size it sets."""

    control_image: Annotated[
        torch.Tensor | list[torch.Tensor],
        Doc("the control image(s) as the ControlNet's input; a list for a MultiControlNetModel"),
    ]
    guess_mode: Annotated[bool, Doc("guess mode, or a ControlNet made for it")]
    height: Annotated[int, Doc("image height in pixels")]
    width: Annotated[int, Doc("image width in pixels")]


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_control_image(
    control_image: Annotated[
        PipelineImageInput | list[PipelineImageInput],
        Doc("the ControlNet's condition (PIL, NumPy or torch); one per ControlNet for several"),
    ],
    batch_size: Annotated[int, Doc("number of images")],
    num_images_per_prompt: Annotated[int, Doc("number of images per prompt")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    controlnet: mb.Component[ControlNet],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[int | None, Doc("image height; the control image's if not given")] = None,
    width: Annotated[int | None, Doc("image width; the control image's if not given")] = None,
    guess_mode: Annotated[
        bool, Doc("let the ControlNet recognize the content without the prompt (no negatives)")
    ] = False,
) -> ControlImage:
    """Resize the control image(s) and repeat them per image (twice with guidance)."""
    nets = _nets(controlnet)
    guess_mode = guess_mode or bool(nets[0].config["global_pool_conditions"])
    given: Any = control_image  # one image input per ControlNet, or one image
    images: list[Any] = list(given) if isinstance(controlnet, MultiControlNetModel) else [given]
    if len(images) != len(nets):
        msg = (
            f"give one control image per ControlNet: {len(nets)} ControlNets, {len(images)} images."
        )
        raise ValueError(msg)
    processor = _processor(vae_scale_factor(vae))
    prepared: list[torch.Tensor] = []
    for image in images:
        tensor = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
        # One image for the whole batch, or one per prompt (then repeated per image).
        repeat = batch_size if tensor.shape[0] == 1 else num_images_per_prompt
        tensor = tensor.repeat_interleave(repeat, dim=0).to(nets[0].device, nets[0].dtype)
        prepared.append(torch.cat([tensor] * 2) if do_cfg and not guess_mode else tensor)
    out_height, out_width = prepared[0].shape[-2:]
    result = prepared if isinstance(controlnet, MultiControlNetModel) else prepared[0]
    return ControlImage(result, guess_mode, int(out_height), int(out_width))


class ControlResiduals(NamedTuple):
    """What a ControlNet adds to the UNet, for `predict_noise`."""

    down_block_res_samples: Annotated[
        tuple[torch.Tensor, ...] | None, Doc("residuals for the UNet's down blocks")
    ]
    mid_block_res_sample: Annotated[
        torch.Tensor | None, Doc("the residual for the UNet's middle block")
    ]


def _per_net(value: Floats, count: int, what: str) -> list[float]:
    values = list(value) if isinstance(value, Sequence) else [value] * count
    if len(values) != count:
        msg = f"give one `{what}` per ControlNet: {count} ControlNets, {len(values)} values."
        raise ValueError(msg)
    return [float(v) for v in values]


def _scales(
    controlnet: ControlNet, i: int, steps: int, scale: Floats, start: Floats, end: Floats
) -> float | list[float]:
    """Each ControlNet's weight at step *i*: its scale inside [start, end] of the run, else 0."""
    count = len(_nets(controlnet))
    starts, ends = (
        _per_net(start, count, "control_guidance_start"),
        _per_net(end, count, "control_guidance_end"),
    )
    keeps = [
        1.0 - float(i / steps < s or (i + 1) / steps > e) for s, e in zip(starts, ends, strict=True)
    ]
    if isinstance(controlnet, MultiControlNetModel):
        return [
            c * k
            for c, k in zip(
                _per_net(scale, count, "controlnet_conditioning_scale"), keeps, strict=True
            )
        ]
    # diffusers takes the first of a list of scales for a single ControlNet.
    return (scale[0] if isinstance(scale, list) else scale) * keeps[0]


def _residuals(
    controlnet: ControlNet,
    control_input: torch.Tensor,
    t: torch.Tensor,
    embeds: torch.Tensor,
    control_image: torch.Tensor | list[torch.Tensor],
    scale: float | list[float],
    guess_mode: bool,
    do_cfg: bool,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> ControlResiduals:
    extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
    down: list[torch.Tensor]
    mid: torch.Tensor
    down, mid = controlnet(
        control_input,
        t,
        encoder_hidden_states=embeds,
        controlnet_cond=control_image,
        conditioning_scale=scale,
        guess_mode=guess_mode,
        return_dict=False,
        **extra,
    )
    if guess_mode and do_cfg:
        # Guess mode runs the ControlNet on the positive half only; the negative half gets none.
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    return ControlResiduals(tuple(down), mid)


_SCALE_DOC = Doc("how much of the ControlNet's residuals to add; one per ControlNet for several")
_START_DOC = Doc("the fraction of the steps at which the ControlNet starts; one per ControlNet")
_END_DOC = Doc("the fraction of the steps at which the ControlNet stops; one per ControlNet")


def _control_input(
    latents: torch.Tensor,
    latent_model_input: torch.Tensor,
    t: torch.Tensor,
    scheduler: SchedulerMixin,
    guess_mode: bool,
    do_cfg: bool,
) -> torch.Tensor:
    """In guess mode with guidance the ControlNet sees the positive half only."""
    if guess_mode and do_cfg:
        return typed(scheduler).scale_model_input(latents, t)
    return latent_model_input


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def controlnet_residuals(
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input (without mask channels)")],
    t: Annotated[torch.Tensor, Doc("the current timestep")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    control_image: Annotated[
        torch.Tensor | list[torch.Tensor], Doc("the prepared control image(s)")
    ],
    guess_mode: Annotated[bool, Doc("guess mode: the ControlNet sees no negative prompt")],
    controlnet: mb.Component[ControlNet],
    scheduler: mb.Component[SchedulerMixin],
    controlnet_conditioning_scale: Annotated[Floats, _SCALE_DOC] = 1.0,
    control_guidance_start: Annotated[Floats, _START_DOC] = 0.0,
    control_guidance_end: Annotated[Floats, _END_DOC] = 1.0,
) -> ControlResiduals:
    """Run the ControlNet on this step's input; its residuals go to the UNet's blocks."""
    scale = _scales(
        controlnet,
        i,
        len(timesteps),
        controlnet_conditioning_scale,
        control_guidance_start,
        control_guidance_end,
    )
    control_input = _control_input(latents, latent_model_input, t, scheduler, guess_mode, do_cfg)
    embeds = prompt_embeds.chunk(2)[1] if guess_mode and do_cfg else prompt_embeds
    return _residuals(
        controlnet, control_input, t, embeds, control_image, scale, guess_mode, do_cfg
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def controlnet_residuals_xl(
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input (without mask channels)")],
    t: Annotated[torch.Tensor, Doc("the current timestep")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    add_time_ids: Annotated[torch.Tensor, Doc("micro-conditioning time ids")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    control_image: Annotated[
        torch.Tensor | list[torch.Tensor], Doc("the prepared control image(s)")
    ],
    guess_mode: Annotated[bool, Doc("guess mode: the ControlNet sees no negative prompt")],
    controlnet: mb.Component[ControlNet],
    scheduler: mb.Component[SchedulerMixin],
    controlnet_conditioning_scale: Annotated[Floats, _SCALE_DOC] = 1.0,
    control_guidance_start: Annotated[Floats, _START_DOC] = 0.0,
    control_guidance_end: Annotated[Floats, _END_DOC] = 1.0,
) -> ControlResiduals:
    """Run the SDXL ControlNet (with the pooled embeddings and time ids) on this step's input."""
    scale = _scales(
        controlnet,
        i,
        len(timesteps),
        controlnet_conditioning_scale,
        control_guidance_start,
        control_guidance_end,
    )
    control_input = _control_input(latents, latent_model_input, t, scheduler, guess_mode, do_cfg)
    half = guess_mode and do_cfg
    embeds = prompt_embeds.chunk(2)[1] if half else prompt_embeds
    added = {
        "text_embeds": add_text_embeds.chunk(2)[1] if half else add_text_embeds,
        "time_ids": add_time_ids.chunk(2)[1] if half else add_time_ids,
    }
    return _residuals(
        controlnet, control_input, t, embeds, control_image, scale, guess_mode, do_cfg, added
    )


class Img2ImgControlDefaults(NamedTuple):
    """The defaults of diffusers' ControlNet image-to-image pipelines."""

    controlnet_conditioning_scale: Annotated[Floats, _SCALE_DOC]
    strength: Annotated[float, Doc("how much to change the image, from 0 to 1")]


@mb.block
def img2img_control_defaults(
    controlnet_conditioning_scale: Annotated[Floats, _SCALE_DOC] = 0.8,
    strength: Annotated[float, Doc("how much to change the image, from 0 to 1")] = 0.8,
) -> Img2ImgControlDefaults:
    """Default the ControlNet's scale and the strength to 0.8, as ControlNet image-to-image does."""
    return Img2ImgControlDefaults(controlnet_conditioning_scale, strength)


@mb.block(output="controlnet_conditioning_scale")
def inpaint_controlnet_scale(
    controlnet_conditioning_scale: Annotated[Floats, _SCALE_DOC] = 0.5,
) -> Annotated[Floats, _SCALE_DOC]:
    """Default the ControlNet's scale to 0.5, as `StableDiffusionControlNetInpaintPipeline`."""
    return controlnet_conditioning_scale


@mb.block(output="guidance_scale")
def inpaint_control_guidance_scale(
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 5.0,
) -> Annotated[float, Doc("the guidance weight")]:
    """Default the guidance weight to 5, as SDXL ControlNet inpainting does (not 7.5)."""
    return guidance_scale


def _controlled(seq: mb.Sequential) -> mb.Sequential:
    """Add ControlNet to one mode's sequence (text-to-image, image-to-image or inpainting)."""
    names = seq.names
    xl = "encode_prompt_xl" in names
    first = "default_size" if "default_size" in names else "preprocess_image"
    seq = seq.insert(prepare_control_image, before=first)
    # Each diffusers ControlNet pipeline has its own defaults; each mode follows its own.
    if "preprocess_mask" in names:
        defaults = inpaint_control_guidance_scale if xl else inpaint_controlnet_scale
        seq = seq.insert(defaults, before=names[0])
    elif "preprocess_image" in names:
        seq = seq.insert(img2img_control_defaults, before=names[0])

    def body(loop_body: mb.Sequential) -> mb.Sequential:
        inner = loop_body.names
        predict = next(n for n in inner if n.startswith("predict_noise"))
        block = controlnet_residuals_xl if xl else controlnet_residuals
        before = "add_inpaint_channels" if "add_inpaint_channels" in inner else predict
        return loop_body.insert(block, before=before, name="controlnet")

    edited = edit_denoise(seq, body)
    assert isinstance(edited, mb.Sequential)  # a sequence stays a sequence
    return edited


def with_controlnet(node: mb.Node) -> mb.Node:
    """Return *node* (SD 1.x or SDXL, any mode) with ControlNet added to each mode.

    `prepare_control_image` goes before the size or the init image is prepared, and the
    ControlNet block before the noise prediction in the denoising loop (before the mask
    channels are added, when inpainting: the ControlNet sees the 4-channel latents).
    """
    return edit_sequences(node, _controlled)


stable_diffusion_controlnet = with_controlnet(stable_diffusion).named("stable_diffusion_controlnet")
"""SD 1.x with ControlNet: inpainting with `mask_image`, image-to-image with `image`, else
text-to-image; `control_image` conditions the ControlNet in every mode."""

stable_diffusion_xl_controlnet = with_controlnet(stable_diffusion_xl).named(
    "stable_diffusion_xl_controlnet"
)
"""SDXL with ControlNet: inpainting with `mask_image`, image-to-image with `image`, else
text-to-image; `control_image` conditions the ControlNet in every mode."""
