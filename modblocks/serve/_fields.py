"""The request fields of a served pipeline, read from its typed inputs.

Each input of ``pipe.blocks.inputs`` becomes one field when it can travel in JSON: plain
values (text, numbers, booleans, literals, lists of them) as they are, images as base64 PNG
(or a file in a multipart upload), and a `torch.Generator` as an integer seed. Inputs that
can't travel (tensors other than images, models) are left to their defaults; a required one
is an error when the app is made.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import attrs

from modblocks._specs import NOTHING, InputSpec
from modblocks._typecheck import type_name
from modblocks.exceptions import ModblocksError

__all__ = ["Field", "FieldKind", "request_fields"]

FieldKind = Literal["value", "image", "seed"]

_JSON_SCALARS: Final = (str, int, float, bool, type(None))
_MAX_SEED: Final = 2**63 - 1

# Ranges of the inputs diffusers' pipelines share (names as their arguments): the form draws
# them, and the request model checks them. Values a model can't use still fail in the run.
KNOWN_RANGES: Final[dict[str, tuple[float | None, float | None]]] = {
    "num_inference_steps": (1, 1000),
    "guidance_scale": (0, 50),
    "strength": (0, 1),
    "eta": (0, 1),
    "guidance_rescale": (0, 1),
    "num_images_per_prompt": (1, 16),
    "num_images_per_digit": (1, 16),
    "height": (8, 4096),
    "width": (8, 4096),
    "clip_skip": (0, 12),
}


@attrs.frozen
class Field:
    """One field of the request: how a pipeline input is given over HTTP.

    Attributes:
        name: the field's name in the request (the input's, or ``seed`` for a generator).
        input: the pipeline input it feeds.
        kind: ``"value"`` (JSON as is), ``"image"`` (base64 PNG or an upload) or ``"seed"``.
        annotation: the type the request model checks (for values: the input's own type).
        default: the default, or `NOTHING` when the field is required.
        description: from the input's ``Doc``.
        minimum: the least number accepted, if any.
        maximum: the greatest number accepted, if any.
        tensor: for images: the input wants a tensor (else a PIL image).
        mask: for images: a mask (values in [0, 1], one channel) rather than a picture.
    """

    name: str
    input: str
    kind: FieldKind
    annotation: Any
    default: Any = NOTHING
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    tensor: bool = False
    mask: bool = False

    @property
    def required(self) -> bool:
        """Whether a request must give the field."""
        return self.default is NOTHING

    @property
    def choices(self) -> tuple[Any, ...]:
        """The values of a ``Literal`` field (empty for others)."""
        inner = _optional_inner(self.annotation)
        return get_args(inner) if get_origin(inner) is Literal else ()

    @property
    def number(self) -> type | None:
        """``int`` or ``float`` for a numeric field, else None."""
        inner = _optional_inner(self.annotation)
        if inner is bool:
            return None
        return inner if inner in (int, float) else None

    @property
    def form_json(self) -> bool:
        """Whether a form sends this field as JSON text (lists, dicts: not one plain value)."""
        if self.kind != "value" or self.choices:
            return False
        members = [m for m in _members(self.annotation) if m is not type(None)]
        return not any(m in (str, int, float, bool) for m in members)


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return type(None) if tp is None else tp


def _members(tp: Any) -> tuple[Any, ...]:
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(m for arg in get_args(tp) for m in _members(arg))
    return (tp,)


def _optional_inner(tp: Any) -> Any:
    members = [m for m in _members(tp) if m is not type(None)]
    return members[0] if len(members) == 1 else tp


def _is_json(tp: Any) -> bool:
    """Whether values of *tp* travel in JSON unchanged (and pydantic can check them)."""
    tp = _strip(tp)
    if tp in _JSON_SCALARS or tp is Any:
        return tp is not Any
    origin = get_origin(tp)
    if origin is Literal:
        return all(isinstance(arg, _JSON_SCALARS) for arg in get_args(tp))
    if origin in (Union, types.UnionType):
        return all(_is_json(arg) for arg in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return bool(args) and all(_is_json(a) for a in args)
    if origin is dict:
        key, value = get_args(tp) or (None, None)
        return key is str and _is_json(value)
    return False


def _has_class(tp: Any, module: str, name: str) -> bool:
    """Whether *tp* (or a member of its union, or of a list in it) is ``module.name``."""
    for member in _members(tp):
        for candidate in (member, *get_args(member)):
            cls = _strip(candidate)
            if isinstance(cls, type) and any(
                c.__module__.startswith(module) and c.__name__ == name for c in cls.__mro__
            ):
                return True
    return False


def _is_generator(tp: Any) -> bool:
    return _has_class(tp, "torch", "Generator")


def _is_image(spec: InputSpec) -> tuple[bool, bool]:
    """Whether *spec* takes an image, and whether as a tensor (else as a PIL image)."""
    if _has_class(spec.type, "PIL", "Image"):
        return True, False
    named = spec.name == "image" or spec.name.endswith(("_image", "_mask")) or spec.name == "mask"
    if named and _has_class(spec.type, "torch", "Tensor"):
        return True, True
    return False, False


def _seed_name(spec: InputSpec, taken: set[str]) -> str:
    name = "seed" if spec.name == "generator" else f"{spec.name}_seed"
    return name if name not in taken else f"{spec.name}_seed"


def _bounds(spec: InputSpec) -> tuple[float | None, float | None]:
    low, high = KNOWN_RANGES.get(spec.name, (None, None))
    for meta in getattr(spec.type, "__metadata__", ()):
        # annotated-types constraints (`Annotated[int, Ge(1)]`), which pydantic reads too
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
    return low, high


def request_fields(inputs: Sequence[InputSpec], label: str) -> tuple[Field, ...]:
    """The fields of a request for a node with *inputs* (named *label* in errors).

    Raises:
        ModblocksError: a required input can't be given over HTTP (bind it first).
    """
    taken = {spec.name for spec in inputs}
    fields: list[Field] = []
    stuck: list[str] = []
    for spec in inputs:
        if spec.kind != "input":
            continue
        default = spec.default if not spec.required else NOTHING
        if not spec.required and default is NOTHING:
            default = None  # optional without a default: absent unless given
        image, tensor = _is_image(spec)
        if _is_generator(spec.type):
            fields.append(
                Field(
                    _seed_name(spec, taken),
                    spec.name,
                    "seed",
                    int | None,
                    None,
                    f"seed for `{spec.name}` (a torch.Generator); random when not given",
                    0,
                    _MAX_SEED,
                )
            )
        elif image:
            mask = "mask" in spec.name
            fields.append(
                Field(
                    spec.name,
                    spec.name,
                    "image",
                    str | None if default is not NOTHING else str,
                    default,
                    spec.description or ("a mask" if mask else "an image"),
                    tensor=tensor,
                    mask=mask,
                )
            )
        elif _is_json(spec.type):
            low, high = _bounds(spec)
            if _optional_inner(spec.type) not in (int, float):
                low = high = None
            fields.append(
                Field(
                    spec.name, spec.name, "value", spec.type, default, spec.description, low, high
                )
            )
        elif spec.required:
            stuck.append(f"`{spec.name}` ({type_name(spec.type)})")
    if stuck:
        msg = (
            f"`{label}` needs inputs that can't be sent over HTTP: {', '.join(stuck)}. Give them "
            "values first, e.g. `pipe.with_configs(...)` or serve `mb.Pipeline(blocks.bind(...))`."
        )
        raise ModblocksError(msg)
    return tuple(fields)
