"""How nodes show themselves: ``node.doc``, the tree ``repr`` and ``node.to_mermaid()``."""

import re
from typing import Annotated, NamedTuple

import torch
from typing_extensions import Doc

import modblocks as mb

# The example of diffusers' Modular Diffusers guide: the composed sequence asks only for what
# no block produces, and lists everything any block produces.


class BatchSize(NamedTuple):
    batch_size: Annotated[int, Doc("number of prompts times images per prompt")]


class Latents(NamedTuple):
    batch_size: Annotated[int, Doc("batch size after duplication")]
    image_latents: Annotated[torch.Tensor, Doc("latents representing the image")]


@mb.block
def input_block(
    prompt: Annotated[str | list[str], Doc("the prompt or prompts to guide generation")],
    num_images_per_prompt: Annotated[int, Doc("images to make for each prompt")] = 1,
) -> BatchSize:
    """Count how many images one call makes."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    return BatchSize(len(prompts) * num_images_per_prompt)


@mb.block
def image_encoder(
    image: Annotated[torch.Tensor, Doc("raw input image to process")],
    batch_size: int,
) -> Latents:
    """Encode a raw image into latents, doubling the batch."""
    latents = image.mean(dim=0, keepdim=True).repeat(batch_size * 2, 1, 1, 1)
    return Latents(batch_size * 2, latents)


modular = mb.Sequential.from_dict({"input": input_block, "image_encoder": image_encoder})


class Vae:
    """A stand-in model class."""


@mb.block(output="latents")
def encode(
    image: Annotated[torch.Tensor, Doc("raw image")],
    vae: Annotated[mb.Component[Vae], Doc("the autoencoder")],
    scale: Annotated[mb.Config[float], Doc("latent scale")] = 0.18215,
    strength: float = 0.5,
    generator: torch.Generator | None = None,
) -> Annotated[torch.Tensor, Doc("the image's latents")]:
    """Encode an image into latents.

    Longer explanation that is not the description.
    """
    return image * scale


def _section(text: str, title: str) -> list[str]:
    """The lines of section *title* of a doc, stripped."""
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        out.append(line.strip())
    return out


def _names(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[0] for line in lines]


# -- doc --------------------------------------------------------------------------------------


def test_doc_of_modular_diffusers_example():
    text = modular.doc
    assert _names(_section(text, "Inputs")) == ["prompt", "image", "num_images_per_prompt"]
    assert _names(_section(text, "Outputs")) == ["batch_size", "image_latents"]
    assert "batch_size" not in _names(_section(text, "Inputs"))
    inputs = "\n".join(_section(text, "Inputs"))
    assert "the prompt or prompts to guide generation" in inputs
    assert "raw input image to process" in inputs
    assert "images to make for each prompt" in inputs
    outputs = "\n".join(_section(text, "Outputs"))
    assert "latents representing the image" in outputs
    assert "torch.Tensor" in outputs


def test_doc_of_modular_example_runs():
    final = modular(prompt=["a cat", "a dog"], image=torch.rand(3, 8, 8))
    assert final["batch_size"] == 4
    assert final["image_latents"].shape == (4, 1, 8, 8)


def test_doc_of_block_lists_every_section():
    text = encode.doc
    lines = text.splitlines()
    assert lines[0].startswith("encode")
    assert "Encode an image into latents." in text
    assert "Longer explanation" not in text
    components = _section(text, "Components")
    assert _names(components) == ["vae"]
    assert "Vae" in components[0]
    assert "the autoencoder" in components[0]
    configs = _section(text, "Configs")
    assert _names(configs) == ["scale"]
    assert "float" in configs[0]
    assert "0.18215" in configs[0]
    assert "latent scale" in configs[0]
    inputs = _section(text, "Inputs")
    assert _names(inputs) == ["image", "strength", "generator"]
    assert "torch.Tensor" in inputs[0]
    assert "required" in inputs[0]
    assert "raw image" in inputs[0]
    assert "0.5" in inputs[1]
    assert "required" not in inputs[1]
    assert "None" in inputs[2]
    outputs = _section(text, "Outputs")
    assert _names(outputs) == ["latents"]
    assert "the image's latents" in outputs[0]
    # Sections in the documented order.
    order = [text.index(f"{t}:") for t in ("Components", "Configs", "Inputs", "Outputs")]
    assert order == sorted(order)


def test_doc_lists_required_inputs_first():
    @mb.block(output="y")
    def f(a: int = 1, b: int = 2, c: int = 3, *, d: int, e: int) -> int:
        return a

    assert _names(_section(f.doc, "Inputs")) == ["d", "e", "a", "b", "c"]


def test_doc_omits_empty_sections():
    @mb.block
    def log(x: int) -> None:
        pass

    text = log.doc
    assert "Components:" not in text
    assert "Configs:" not in text
    assert "Outputs:" not in text
    assert "Inputs:" in text


def test_doc_of_sequence_names_sequence_and_sub_blocks():
    pipe = modular.named("encode_all")
    text = pipe.doc
    assert text.splitlines()[0].startswith("encode_all")
    assert "input" in text
    assert "image_encoder" in text


def test_doc_of_sequence_collects_components():
    @mb.block(output="image")
    def decode(latents: torch.Tensor, vae: mb.Component[Vae]) -> torch.Tensor:
        return latents

    text = (encode >> decode).doc
    assert _names(_section(text, "Components")) == ["vae"]
    assert _names(_section(text, "Outputs")) == ["latents", "image"]


def test_doc_of_loop_and_switch():
    @mb.block(output="latents")
    def step(latents: torch.Tensor, t: int) -> torch.Tensor:
        """Take one step."""
        return latents

    lp = mb.loop(step, over="timesteps", name="denoise")
    text = lp.doc
    assert text.startswith("denoise")
    assert "timesteps" in text
    assert _names(_section(text, "Inputs")) == ["timesteps", "latents"]
    sw = mb.switch({"image": encode}, name="auto")
    assert sw.doc.startswith("auto")
    assert "image" in sw.doc


# -- repr -------------------------------------------------------------------------------------


def test_repr_of_sequence_is_a_tree_with_descriptions():
    text = repr(modular)
    lines = text.splitlines()
    assert len(lines) == 3
    assert "input" in lines[1]
    assert "Count how many images one call makes" in lines[1]
    assert "image_encoder" in lines[2]
    assert "Encode a raw image into latents" in lines[2]
    assert lines[1].startswith("├─")
    assert lines[2].startswith("└─")


def test_repr_of_nested_nodes_is_indented():
    @mb.block(output="latents")
    def step(latents: torch.Tensor, t: int) -> torch.Tensor:
        """Take one step."""
        return latents

    pipe = (modular.named("prepare") >> mb.loop(step, over="timesteps", name="denoise")).named(
        "text2img"
    )
    text = repr(pipe)
    lines = text.splitlines()
    assert lines[0].startswith("text2img")
    assert any(re.match(r"^├─ prepare", line) for line in lines)
    assert any(re.match(r"^│  ├─ input", line) for line in lines)
    assert any(re.match(r"^└─ denoise", line) for line in lines)
    assert any(re.match(r"^   └─ step.*Take one step", line) for line in lines)


def test_repr_of_block_names_it():
    text = repr(encode)
    assert text.startswith("encode")
    assert "Encode an image into latents" in text


# -- mermaid ----------------------------------------------------------------------------------


def test_mermaid_is_a_flowchart_with_labelled_edges():
    chart = modular.to_mermaid()
    assert chart.startswith("flowchart")
    assert re.search(r"-->\|batch_size\|", chart)
    assert '"input"' in chart
    assert '"image_encoder"' in chart
    for name in ("prompt", "image", "image_latents"):
        assert f'"{name}"' in chart


def test_mermaid_edge_goes_from_producer_to_consumer():
    chart = modular.to_mermaid()
    ids = {m.group(2): m.group(1) for m in re.finditer(r'(\w+)\["(\w+)"\]', chart)}
    assert f"{ids['input']} -->|batch_size| {ids['image_encoder']}" in chart


def test_mermaid_of_loop_and_switch():
    @mb.block(output="latents")
    def step(latents: torch.Tensor, t: int) -> torch.Tensor:
        return latents

    @mb.block(output="images")
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return latents

    pipe = mb.switch({"image": encode}, name="auto") >> mb.loop(step, over="timesteps") >> decode
    chart = pipe.to_mermaid()
    assert chart.startswith("flowchart")
    assert "subgraph" in chart
    assert "timesteps" in chart
    assert "-->|latents|" in chart
    lines = [line.strip() for line in chart.splitlines()]
    opened = sum(line.startswith("subgraph") for line in lines)
    assert opened >= 2
    assert opened == lines.count("end")
