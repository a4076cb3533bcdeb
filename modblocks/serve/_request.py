"""The request model of ``POST /runs``, generated from the pipeline's fields, and its parsing."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pydantic

from modblocks._names import did_you_mean
from modblocks.exceptions import ModblocksError

from ._fields import Field
from ._images import ImageError, decode_image, to_input

__all__ = ["Limits", "RequestError", "Requests"]


@attrs.frozen
class Limits:
    """Limits on what a request may carry.

    Attributes:
        max_request_bytes: the largest request body.
        max_image_bytes: the largest image file.
        max_image_pixels: the most pixels an image may decode to (width times height);
            checked before decoding, against decompression bombs.
    """

    max_request_bytes: int = 32 * 2**20
    max_image_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096


class RequestError(ModblocksError, ValueError):
    """A request the server refuses before running: *status* 422 (bad inputs) or 413."""

    status: int = 422
    errors: Sequence[Mapping[str, Any]] = ()


class Requests:
    """Turns request bodies into pipeline inputs for one pipeline's *fields*."""

    def __init__(self, fields: Sequence[Field], label: str, limits: Limits) -> None:
        self.fields = {field.name: field for field in fields}
        self.label = label
        self.limits = limits
        definitions: dict[str, Any] = {}
        for field in fields:
            extra: dict[str, Any] = {}
            if field.kind == "image":
                extra = {"contentEncoding": "base64", "contentMediaType": "image/png"}
            definitions[field.name] = (
                field.annotation,
                pydantic.Field(
                    default=... if field.required else field.default,
                    description=field.description or None,
                    ge=field.minimum,
                    le=field.maximum,
                    json_schema_extra=extra or None,
                ),
            )
        name = "".join(part.capitalize() for part in label.split("_")) + "Inputs"
        self.model: type[pydantic.BaseModel] = pydantic.create_model(
            name,
            __config__=pydantic.ConfigDict(extra="ignore", title=f"Inputs of {label}"),
            **definitions,
        )

    def schema(self) -> dict[str, Any]:
        """The JSON schema of a JSON request body."""
        return self.model.model_json_schema()

    def form_schema(self) -> dict[str, Any]:
        """The JSON schema of a multipart request: images as files."""
        schema = self.model.model_json_schema()
        for field in self.fields.values():
            if field.kind == "image":
                schema["properties"][field.name] = {
                    "type": "string",
                    "format": "binary",
                    "description": field.description,
                }
        return schema

    def parse(
        self, body: Mapping[str, Any], files: Mapping[str, bytes] | None = None
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """Check *body* (and uploaded *files*); return the pipeline inputs and the seeds.

        Raises:
            RequestError: unknown names, missing or wrong values, unreadable images.
        """
        files = files or {}
        unknown = [name for name in [*body, *files] if name not in self.fields]
        if unknown:
            raise self._unknown(unknown)
        # A form sends "" for a field left empty: the input keeps its default.
        values = {k: v for k, v in body.items() if not (v == "" and k in self._optional)}
        try:
            checked = self.model.model_validate(values)
        except pydantic.ValidationError as err:
            raise self._invalid(err) from None
        inputs: dict[str, Any] = {}
        seeds: dict[str, int] = {}
        for name, field in self.fields.items():
            value = getattr(checked, name)
            if field.kind == "seed":
                drawn = random.randrange(2**31)  # noqa: S311 - a seed, not a secret
                seeds[field.input] = drawn if value is None else int(value)
            elif field.kind == "image":
                data = files.get(name, value)
                if data:
                    inputs[field.input] = self._image(field, data)
            elif name in checked.model_fields_set:  # others keep the pipeline's defaults
                inputs[field.input] = value
        return inputs, seeds

    @property
    def _optional(self) -> set[str]:
        return {name for name, field in self.fields.items() if not field.required}

    def _image(self, field: Field, data: str | bytes) -> Any:
        try:
            image = decode_image(
                data,
                field.name,
                max_bytes=self.limits.max_image_bytes,
                max_pixels=self.limits.max_image_pixels,
            )
        except ImageError as err:
            raise RequestError(str(err), status=err.status, errors=()) from None
        return to_input(image, tensor=field.tensor, mask=field.mask)

    def _unknown(self, names: list[str]) -> RequestError:
        choices = sorted(self.fields)
        hints = "".join(did_you_mean(name, choices) for name in names)
        listed = ", ".join(f"`{name}`" for name in names)
        what = "input" if len(names) == 1 else "inputs"
        accepted = ", ".join(f"`{name}`" for name in choices) or "nothing"
        msg = f"`{self.label}` has no {what} {listed}.{hints} It accepts: {accepted}."
        errors = [{"loc": ["body", n], "msg": "unknown input", "type": "unknown"} for n in names]
        return RequestError(msg, errors=errors)

    def _invalid(self, err: pydantic.ValidationError) -> RequestError:
        missing = [str(e["loc"][0]) for e in err.errors() if e["type"] == "missing"]
        lines: list[str] = []
        if missing:
            listed = ", ".join(f"`{name}`" for name in missing)
            what = "input" if len(missing) == 1 else "inputs"
            lines.append(f"`{self.label}` is missing required {what} {listed}.")
        for error in err.errors():
            if error["type"] == "missing":
                continue
            where = ".".join(str(part) for part in error["loc"])
            field = self.fields.get(str(error["loc"][0]))
            wanted = f" (expected {_type_text(field)})" if field is not None else ""
            lines.append(f"`{where}`{wanted}: {error['msg']}; got {error.get('input')!r}.")
        errors = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in err.errors()
        ]
        return RequestError(" ".join(lines), errors=errors)


def _type_text(field: Field) -> str:
    if field.kind == "seed":
        return "an integer seed"
    if field.kind == "image":
        return "a base64 PNG"
    from modblocks._typecheck import type_name

    text = type_name(field.annotation)
    if field.minimum is not None or field.maximum is not None:
        low = "" if field.minimum is None else f"{field.minimum:g} <= "
        high = "" if field.maximum is None else f" <= {field.maximum:g}"
        text += f", {low}value{high}"
    return text
