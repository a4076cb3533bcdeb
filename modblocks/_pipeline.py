"""`Pipeline`: blocks with their components bound, the object users keep and call."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from types import MappingProxyType
from typing import Any, cast, overload

import attrs

from ._cache import Cache, touch
from ._cachehook import cache_hooks
from ._components import Components
from ._engine import CancelToken, Hook, OnStep, check_options, execute
from ._events import Event
from ._lazy import Lazy
from ._names import did_you_mean, listed
from ._node import Node
from ._offload import DiskOffload, Placement, placement_for
from ._paths import Path
from ._specs import InputSpec
from ._state import State, summarize
from ._typecheck import is_compatible, type_name
from ._wrapped import wrapped_classes
from .exceptions import (
    MissingInputError,
    ModblocksError,
    UnknownInputError,
    UnknownOutputError,
    WiringError,
)

__all__ = ["Pipeline"]


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


class _FromRegistry(Mapping[str, Any]):
    """A registry's components as a pipeline first sees them (it attaches to the registry)."""

    def __init__(self, registry: Components) -> None:
        self.registry = registry
        self._items = MappingProxyType(dict(registry))

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _bound_components(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(value, Components):
        return _FromRegistry(value)
    return _frozen_mapping(value)


def _hook_tuple(hooks: Iterable[Hook]) -> tuple[Hook, ...]:
    found = tuple(hooks)
    for hook in found:
        if not isinstance(cast("object", hook), Hook):
            msg = f"`hooks` holds `mb.Hook` objects (offloading policies ...), not {hook!r}."
            raise WiringError(msg, name="hooks")
    return found


@attrs.frozen(slots=False, eq=False, repr=False)
class Pipeline:
    """Blocks plus the components and configs they declare, checked once and ready to call.

    Args:
        blocks: the node to run (a block, sequence, switch or loop).
        components: models, schedulers, tokenizers ... by name; every component the blocks
            declare without a default must be given, as an instance of the declared type.
        configs: values for the blocks' configs (they keep their defaults otherwise).
        inference_mode: run under `torch.inference_mode()` (the default), as diffusers does.
        cache: a `Cache` that serves unchanged blocks instead of running them again (change
            the seed and only what depends on the generator runs).
        hooks: hooks run around every unit of every run (`Hook`).
        check_types: check each input's value against the type its first reader declares
            before anything runs (about 0.1 µs an input); False skips it, for hot loops.
        offload: where models are while blocks run: ``"model"`` (each model on the device
            only while its block runs), ``"sequential"`` (layer by layer, diffusers' group
            offloading), ``"disk"`` (lazy models read from their folders layer group by
            layer group), a policy (`ModelOffload`, `GroupOffload`, `DiskOffload`), or None
            (models stay where they are; `Lazy` components load on first use).
        components: also a `Components` registry, whose components the pipeline binds by name.

    Examples:
        ``pipe = mb.Pipeline(text2img, components={"unet": unet, ...})`` then
        ``images = pipe(prompt="a cat", output="images")``.
    """

    blocks: Node
    components: Mapping[str, Any] = attrs.field(factory=dict[str, Any], converter=_bound_components)
    configs: Mapping[str, Any] = attrs.field(factory=dict[str, Any], converter=_frozen_mapping)
    inference_mode: bool = True
    cache: Cache | None = None
    hooks: tuple[Hook, ...] = attrs.field(default=(), converter=_hook_tuple)
    check_types: bool = True
    offload: str | Placement | None = None

    def __attrs_post_init__(self) -> None:
        registry = getattr(self.components, "registry", None)
        if registry is not None:
            object.__setattr__(self, "components", _frozen_mapping(self.components))
        _check_bindings(self.blocks, self.components, self.configs, extra_components=True)
        if "output" in self.blocks._iface.accepted:
            msg = (
                f"`{self.blocks._label}` reads an input called `output`, which `pipe(...)` takes "
                "as the name of the value to return. Rename it, e.g. "
                "`blocks.rename(output='output_value')`."
            )
            raise WiringError(msg, name="output", consumer=self.blocks._label)
        declared = {spec.name for spec in self.blocks.components}
        if not declared.issuperset(self.components):
            # e.g. a diffusers pipeline's `.components`, with its safety checker and other
            # parts these blocks don't use: keep only what the blocks declare.
            used = {k: v for k, v in self.components.items() if k in declared}
            object.__setattr__(self, "components", _frozen_mapping(used))
        bound = {**self.components, **self.configs}
        self.__dict__["_bound"] = bound
        accepted = self.blocks._iface.accepted - self.components.keys()
        self.__dict__["_accepted"] = accepted
        placement = placement_for(self.offload, self.components)
        self.__dict__["_placement"] = () if placement is None else (placement,)
        self.__dict__["_registry"] = registry
        if registry is not None:
            registry.attach(self)

    # -- running -------------------------------------------------------------------------

    def run(
        self,
        state: Mapping[str, Any] | None = None,
        /,
        *,
        on_step: OnStep | None = None,
        events: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        resume: str | Path | None = None,
        **inputs: Any,
    ) -> State:
        """Run the blocks with the bound components and return the final state.

        Takes the same arguments as `Node.run` (the cache is the pipeline's). The bound
        components stay out of the returned state (and out of the state of an error), so
        states stay small to keep and to pickle; values the run made under a component's name
        (the run's own copy of the scheduler) stay in, so ``resume=`` goes on with them.
        """
        self._check_given(inputs)
        check_options(self.blocks._label, on_step, events, cancel)
        with self._stripping_errors(), self._mode():
            final = execute(
                self.blocks,
                state,
                inputs,
                base=self.__dict__["_bound"],
                on_step=on_step,
                events=events,
                cancel=cancel,
                resume=resume,
                hooks=self._hooks(),
                check_types=self.check_types,
            )
        return self._strip(final)

    @property
    def placement(self) -> Placement | None:
        """The policy placing the components (from ``offload=``, or lazy loading), or None."""
        found: tuple[Placement, ...] = self.__dict__["_placement"]
        return found[0] if found else None

    def _hooks(self) -> tuple[Hook, ...]:
        # The policy is innermost: a unit the cache serves, or a hook skips, loads nothing.
        return (*cache_hooks(self.cache), *self.hooks, *self.__dict__["_placement"])

    @contextlib.contextmanager
    def _stripping_errors(self) -> Generator[None]:
        """Keep the components out of the state an error carries, as out of results."""
        try:
            yield
        except ModblocksError as error:
            error_state = getattr(error, "state", None)
            if isinstance(error_state, State):
                error.__dict__["state"] = self._strip(error_state)
            raise

    @overload
    def __call__(self, *, output: None = None, **inputs: Any) -> State: ...
    @overload
    def __call__(self, *, output: str, **inputs: Any) -> Any: ...
    @overload
    def __call__(self, *, output: Sequence[str], **inputs: Any) -> tuple[Any, ...]: ...
    def __call__(self, *, output: str | Sequence[str] | None = None, **inputs: Any) -> Any:
        """Run with *inputs* and return the value called *output*, a tuple, or the `State`.

        ``output="images"`` returns that value, ``output=["images", "latents"]`` a tuple in
        that order, and ``output=None`` (the default) the whole final state.
        """
        names = self._check_output(output)
        state = self.run(**inputs)
        if output is None:
            return state
        if isinstance(output, str):
            return _pick(state, output, self.blocks)
        return tuple(_pick(state, name, self.blocks) for name in names)

    def _check_output(self, output: object) -> tuple[str, ...]:
        """Check ``output=`` before anything runs; return the names it asks for."""
        if output is None:
            return ()
        if isinstance(output, str):
            names: tuple[object, ...] = (output,)
        elif isinstance(output, Sequence):
            names = tuple(cast("Sequence[object]", output))
        else:
            names = (output,)
        iface = self.blocks._iface
        known = [*iface.provides, *(n for n in iface.accepted if n not in self.components)]
        for name in names:
            if not isinstance(name, str):
                msg = (
                    f"`output=` names the value(s) to return: a string, a list of strings or "
                    f"None for the whole state; got {output!r}."
                )
                raise UnknownOutputError(msg, node=self.blocks._label, names=(repr(name),))
        unknown = tuple(cast("str", n) for n in names if n not in known)
        if unknown:
            hints = "".join(did_you_mean(n, known) for n in unknown)
            msg = (
                f"`{self.blocks._label}` produces no value {listed(unknown)}.{hints} "
                f"It produces: {listed(iface.provides)}. Nothing was run."
            )
            raise UnknownOutputError(msg, node=self.blocks._label, names=unknown)
        return cast("tuple[str, ...]", names)

    def map(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        executor: Executor | None = None,
        batch_size: int = 1,
        output: str | Sequence[str] | None = "images",
        ordered: bool = True,
        batch: Collection[str] | None = None,
    ) -> list[Any]:
        """Run the pipeline over many input dicts, locally or on a `concurrent.futures.Executor`.

        Args:
            inputs: one mapping of inputs per item.
            executor: where to run: None runs in this process (with a progress bar); any
                `concurrent.futures.Executor` works (threads, processes, Dask's
                ``client.get_executor()``).
            batch_size: items stacked into one pipeline call where the inputs allow it.
            output: what to return per item, as for `__call__`.
            ordered: return results in input order (the default), or ``(index, result)``
                pairs in the order the items finished.
            batch: the inputs stacked as lists when *batch_size* > 1; None (the default):
                those annotated as one value or a list of them (``str | list[str]``).

        Returns:
            One result per item.
        """
        from ._map import map_pipeline

        return map_pipeline(
            self,
            inputs,
            executor=executor,
            batch_size=batch_size,
            output=output,
            ordered=ordered,
            batch=batch,
        )

    def stream(self, state: Mapping[str, Any] | None = None, /, **inputs: Any) -> Iterator[State]:
        """Run, yielding the state after each loop step and the final state (see `Node.stream`)."""
        from ._stream import stream

        self._check_given(inputs)
        steps = stream(
            self.blocks,
            state,
            inputs,
            base=self.__dict__["_bound"],
            hooks=self._hooks(),
            inference_mode=self.inference_mode,
            check_types=self.check_types,
        )
        with self._stripping_errors():
            for step_state in steps:
                yield self._strip(step_state)

    def _check_given(self, inputs: Mapping[str, Any]) -> None:
        accepted: frozenset[str] = self.__dict__["_accepted"]
        if inputs and not accepted.issuperset(inputs):
            for name in inputs:
                if name in self.components:
                    msg = (
                        f"`{name}` is a component bound by the pipeline, not a per-call input. "
                        f"Use `pipe.with_components({name}=...)` to change it."
                    )
                    raise UnknownInputError(msg, node=self.blocks._label, names=(name,))

    def _strip(self, state: State) -> State:
        """A state without the bound components (a new one: states never change)."""
        components = self.components
        values = state._values
        if not any(values.get(k, _ABSENT) is v for k, v in components.items()):
            return state
        kept = {k: v for k, v in values.items() if components.get(k, _ABSENT) is not v}
        return State._adopt(kept)

    def _mode(self) -> contextlib.AbstractContextManager[Any]:
        if not self.inference_mode:
            return contextlib.nullcontext()
        import torch

        return torch.inference_mode()

    # -- components ----------------------------------------------------------------------

    def with_components(self, **components: Any) -> Pipeline:
        """Return a new pipeline with some components replaced (checked as at construction)."""
        _check_bindings(self.blocks, {**self.components, **components}, self.configs)
        for component in components.values():
            touch(component)  # a swapped-in object may have been used (and cached) before
        return self._evolve(components={**self.components, **components})

    def with_configs(self, **configs: Any) -> Pipeline:
        """Return a new pipeline with some configs changed."""
        return self._evolve(configs={**self.configs, **configs})

    def _evolve(self, **changes: Any) -> Pipeline:
        new = attrs.evolve(self, **changes)
        registry: Components | None = self.__dict__["_registry"]
        if registry is not None:  # the new pipeline uses the registry's components too
            new.__dict__["_registry"] = registry
            registry.attach(new)
        return new

    def to(self, device: Any = None, dtype: Any = None) -> Pipeline:
        """Move the components that are torch modules to *device* and/or *dtype*.

        Like ``torch.nn.Module.to`` (and diffusers' ``pipe.to``) the modules move in place;
        the pipeline is returned for chaining. A `Lazy` component moves when it loads.
        """
        for component in self.components.values():
            if type(component) is Lazy:
                component.to(device, dtype)
                touch(component)
                continue
            move = getattr(component, "to", None)
            if move is None or not hasattr(component, "parameters"):
                continue
            if device is not None:
                move(device)
            if dtype is not None:
                move(dtype=dtype)
            touch(component)  # cached results computed before the move are stale
        return self

    # -- adapters (the logic is in modblocks.diffusion.lora; imported here lazily) ---------

    def _loaded(self) -> Pipeline:
        """This pipeline with its `Lazy` components loaded: adapters change the models in place."""
        if not any(type(v) is Lazy for v in self.components.values()):
            return self
        if isinstance(self.placement, DiskOffload):
            msg = (
                "adapters change the models in place, and with `offload='disk'` the models are "
                "read from their folders again on every use. Load the adapter into a pipeline "
                "without disk offloading (`offload='model'` saves GPU memory), or fuse it and "
                "save the models first."
            )
            raise ModblocksError(msg)
        loaded = {k: v.get() if type(v) is Lazy else v for k, v in self.components.items()}
        return attrs.evolve(self, components=loaded)

    def load_lora_weights(
        self, path_or_state_dict: Any, adapter_name: str | None = None, **kwargs: Any
    ) -> None:
        """Load LoRA weights into the UNet and text encoders, in place, as diffusers does.

        Every cache sees the change (see `modblocks.diffusion.lora`, also for pipelines that
        share the models).
        """
        from .diffusion import lora

        lora.load_lora_weights(self._loaded(), path_or_state_dict, adapter_name, **kwargs)

    def set_adapters(self, adapter_names: str | Sequence[str], adapter_weights: Any = None) -> None:
        """Activate the named LoRA adapters, with a weight each (1.0 if not given)."""
        from .diffusion import lora

        lora.set_adapters(self._loaded(), adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        """Return the names of the LoRA adapters in use."""
        from .diffusion import lora

        return lora.get_active_adapters(self._loaded())

    def unload_lora_weights(self) -> None:
        """Remove every LoRA adapter from the models."""
        from .diffusion import lora

        lora.unload_lora_weights(self._loaded())

    def fuse_lora(
        self, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None
    ) -> None:
        """Merge the active (or named) LoRA adapters into the models' weights."""
        from .diffusion import lora

        lora.fuse_lora(self._loaded(), lora_scale, adapter_names)

    def unfuse_lora(self) -> None:
        """Take fused LoRA adapters back out of the models' weights."""
        from .diffusion import lora

        lora.unfuse_lora(self._loaded())

    def load_ip_adapter(self, path_or_state_dict: Any, **kwargs: Any) -> None:
        """Load IP-Adapter weights into the UNet, in place (see `modblocks.diffusion.ip_adapter`).

        Takes diffusers' arguments (`subfolder`, `weight_name`, `image_encoder_folder`, ...).
        """
        from .diffusion import ip_adapter

        ip_adapter.load_ip_adapter(self._loaded(), path_or_state_dict, **kwargs)

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """Weight the loaded IP-Adapter(s): one number, one per adapter, or per block."""
        from .diffusion import ip_adapter

        ip_adapter.set_ip_adapter_scale(self._loaded(), scale)

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter(s) from the UNet."""
        from .diffusion import ip_adapter

        ip_adapter.unload_ip_adapter(self._loaded())

    # -- loading and saving ----------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        blocks: Node,
        *,
        torch_dtype: Any = None,
        variant: str | None = None,
        components: Mapping[str, Any] | None = None,
        configs: Mapping[str, Any] | None = None,
        inference_mode: bool = True,
        lazy: bool = False,
        offload: str | Placement | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        use_safetensors: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        cache: Cache | None = None,
        hooks: Iterable[Hook] = (),
    ) -> Pipeline:
        """Load the components *blocks* declare from a diffusers-format folder or Hub repo.

        The repo holds ``modular_model_index.json`` (diffusers' modular repos: each component
        may live in another repo) or ``model_index.json`` and a subfolder per component, as
        written by diffusers' ``save_pretrained`` or `save_pretrained`. Configs the blocks
        declare are read from the index when it sets them (as diffusers pipelines register
        theirs), and *configs* overrides them.

        Args:
            path: a local folder, or a Hugging Face Hub id (``"org/name"``) fetched with
                ``huggingface_hub``, read from its cache when offline.
            blocks: the node to run.
            torch_dtype: the dtype of the models, or a dict per component with a
                ``"default"``: ``{"unet": torch.float16, "default": torch.float32}``.
            variant: the weights variant (``"fp16"`` for ``*.fp16.safetensors``), as in diffusers.
            components: components to use as they are instead of loading them; or a
                `Components` registry, which gives what it holds from the same place and
                keeps what is loaded, to share it with other pipelines.
            configs: config values that override the index's.
            inference_mode: run under `torch.inference_mode()`.
            lazy: bind a `Lazy` per component, loaded when a block first reads it.
            offload: where models are while blocks run (see `Pipeline`); ``"disk"`` implies
                *lazy*.
            subfolder: the pipeline's folder inside the repo.
            revision: the Hub revision (branch, tag or commit).
            use_safetensors: load only safetensors weights (the default); pickle weights can
                run code, so they load only with False.
            cache_dir: the Hugging Face cache to read Hub ids from.
            local_files_only: never reach the Hub (None: ``HF_HUB_OFFLINE`` decides).
            cache: a `Cache` for the pipeline.
            hooks: hooks for the pipeline.
        """
        from ._pretrained import load_pretrained

        registry = components if isinstance(components, Components) else None
        given = {} if registry is not None else dict(components or {})
        wanted = [s for s in blocks.components if s.name not in given]
        lazy = lazy or offload == "disk" or isinstance(offload, DiskOffload)
        loaded, found = load_pretrained(
            path,
            wanted,
            blocks.configs,
            lazy=lazy,
            shared=None if registry is None else registry.shared,
            torch_dtype=torch_dtype,
            variant=variant,
            subfolder=subfolder,
            revision=revision,
            use_safetensors=use_safetensors,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            local_files_only=local_files_only,
        )
        if registry is not None:
            for name, value in loaded.items():
                registry.add(name, value)
        pipe = cls(
            blocks,
            components={**loaded, **given},
            configs={**found, **(configs or {})},
            inference_mode=inference_mode,
            cache=cache,
            hooks=tuple(hooks),
            offload=offload,
        )
        if registry is not None:
            pipe.__dict__["_registry"] = registry
            registry.attach(pipe)
        return pipe

    def save_pretrained(
        self,
        path: str | os.PathLike[str],
        *,
        pipeline_class: str | None = None,
        modular: bool = False,
        reference: bool = False,
    ) -> None:
        """Write the components as a diffusers-format folder that diffusers can load back.

        The bound configs are written to the index, so `from_pretrained` restores them.

        Args:
            path: the folder to write (created if needed).
            pipeline_class: the diffusers pipeline class named in the index (e.g.
                ``"StableDiffusionPipeline"``), so ``DiffusionPipeline.from_pretrained`` works.
            modular: write diffusers' modular ``modular_model_index.json`` instead of
                ``model_index.json``.
            reference: with *modular*, record components loaded from a folder or Hub repo by
                where they live instead of copying their weights.
        """
        from ._pretrained import save_components

        if reference and not modular:
            msg = (
                "`reference=True` records where components live, which only "
                "`modular_model_index.json` can say: pass `modular=True` too."
            )
            raise ModblocksError(msg)
        save_components(
            path,
            self.components,
            configs=self.configs,
            pipeline_class=pipeline_class,
            modular=modular,
            reference=reference,
        )

    # -- documentation ---------------------------------------------------------------------

    @property
    def doc(self) -> str:
        """The blocks' documentation, with the values bound to components and configs."""
        lines = [self.blocks.doc, "", "Bound components:"]
        lines += [f"    {k}: {summarize(v)}" for k, v in self.components.items()] or ["    (none)"]
        if self.configs:
            lines += ["", "Bound configs:"]
            lines += [f"    {k} = {v!r}" for k, v in self.configs.items()]
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # By value, like composite nodes: the read-only views of components and configs don't
        # pickle themselves, and a cache travels as an empty one with the same settings.
        values = (dict(self.components), dict(self.configs), self.inference_mode, self.cache)
        return (_unpickle, (self.blocks, *values, self.hooks, self.check_types, self.offload))

    def __repr__(self) -> str:
        comps = ", ".join(f"{k}={type(v).__name__}" for k, v in self.components.items())
        return f"Pipeline({self.blocks._label}, components=({comps}))"

    def _repr_markdown_(self) -> str:
        """In Jupyter: the doc with the bound components and configs, and the diagram."""
        from ._render import render_markdown

        return render_markdown(self.blocks, self.doc)


def _unpickle(
    blocks: Node,
    components: dict[str, Any],
    configs: dict[str, Any],
    inference_mode: bool,
    cache: Cache | None,
    hooks: tuple[Hook, ...] = (),
    check_types: bool = True,
    offload: str | Placement | None = None,
) -> Pipeline:
    return Pipeline(
        blocks,
        components=components,
        configs=configs,
        inference_mode=inference_mode,
        cache=cache,
        hooks=hooks,
        check_types=check_types,
        offload=offload,
    )


_ABSENT: Any = object()


def _pick(state: State, name: str, blocks: Node) -> Any:
    if name in state:
        return state[name]
    known = list(state)
    msg = (
        f"this run of `{blocks._label}` produced no value `{name}` (the branch that ran "
        f"doesn't make it).{did_you_mean(name, known)} Its final state holds: {listed(known)}; "
        "it is in `err.state`."
    )
    raise UnknownOutputError(msg, node=blocks._label, names=(name,), state=state)


def _check_bindings(
    blocks: Node,
    components: Mapping[str, Any],
    configs: Mapping[str, Any],
    *,
    extra_components: bool = False,
) -> None:
    """Check every component and config at once; report all problems together.

    With *extra_components*, components the blocks don't declare are allowed (and named in
    the error about missing ones, in case one is misspelled).
    """
    if not isinstance(cast("object", blocks), Node):
        msg = f"a pipeline runs a node (a block, sequence, switch or loop), not {blocks!r}."
        raise WiringError(msg)
    declared = {s.name: s for s in blocks.components}
    declared_configs = {s.name: s for s in blocks.configs}
    label = blocks._label
    unknown = [n for n in components if n not in declared]
    extra = unknown if extra_components else []
    unknown = [] if extra_components else unknown
    unknown_configs = [n for n in configs if n not in declared_configs]
    if unknown or unknown_configs:
        lines = [
            f"`{n}` is not a component of `{label}`.{did_you_mean(n, list(declared))}"
            for n in unknown
        ] + [
            f"`{n}` is not a config of `{label}`.{did_you_mean(n, list(declared_configs))}"
            for n in unknown_configs
        ]
        msg = (
            " ".join(lines)
            + f" Components: {_names(declared)}; configs: {_names(declared_configs)}."
        )
        raise UnknownInputError(msg, node=label, names=tuple(unknown + unknown_configs))
    missing = tuple(n for n, s in declared.items() if s.required and n not in components)
    if missing:
        what, them = ("components", "them") if len(missing) > 1 else ("component", "it")
        msg = (
            f"`{label}` needs {what} {_names(missing)}. Pass {them} in `components={{...}}` "
            f"or load {them} with `Pipeline.from_pretrained`."
        )
        if extra:
            hints = "".join(did_you_mean(n, list(missing)) for n in extra)
            msg += f" Given but not used by these blocks: {_names(extra)}.{hints}"
        raise MissingInputError(msg, node=label, names=missing)
    wrong = [
        _wrong_type(spec, components[name], "component")
        for name, spec in declared.items()
        if name in components and not _instance_of(components[name], spec)
    ] + [
        _wrong_type(spec, configs[name], "config")
        for name, spec in declared_configs.items()
        if name in configs and not _instance_of(configs[name], spec)
    ]
    if wrong:
        msg = f"`{label}` got values of the wrong type:\n" + "\n".join(wrong)
        raise WiringError(msg, consumer=label, name=wrong[0].split("`")[1])


def _names(names: Any) -> str:
    return ", ".join(f"`{n}`" for n in names) or "none"


def _instance_of(value: Any, spec: InputSpec) -> bool:
    """Whether *value* may be bound to *spec*: also a lazy or wrapped model of its type."""
    if value is None and not spec.required and spec.default is None:
        return True
    if type(value) is Lazy:
        return is_compatible(value.cls, spec.type)
    # torch.compile's OptimizedModule, PEFT's PeftModel ...: the model inside counts.
    return any(is_compatible(cls, spec.type) for cls in wrapped_classes(value))


def _wrong_type(spec: InputSpec, value: Any, kind: str) -> str:
    shown: Any = value.cls if type(value) is Lazy else type(cast("object", value))
    return (
        f"  - {kind} `{spec.name}` must be {type_name(spec.type)}, "
        f"got {type_name(shown)}: {summarize(value)}"
    )
