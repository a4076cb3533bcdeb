"""Fingerprints: 16-byte digests that change whenever a value does, for cache keys.

A fingerprint is taken of what the caller gives a run (values produced inside a run are named
by the key of the unit that made them instead). It must change with the value, or a cache
would serve a stale result, so the rule is by kind:

- plain values, and lists, tuples, dicts, sets of them: by value, in one pass at C speed
  (``marshal``) where the container holds only plain values;
- tensors, NumPy arrays and PIL images: by content (one hash over the bytes, about a
  millisecond per megabyte), so a change made through ``.numpy()`` or ``.data`` is seen;
  ``hash_tensors=False`` keys tensors by identity and version counter instead (free, blind to
  those changes);
- torch generators: by their state;
- models (``torch.nn.Module``): by identity and a digest of their parameters' and buffers'
  storage, version and dtype, their structure, and the state of LoRA layers (see
  `module_digest`), so loading, fusing or scaling a LoRA, replacing a submodule, ``.to()``
  and ``load_state_dict`` are all seen without `touch`;
- a `Lazy` component: by identity, until its loaded copy changes in place (then by that
  copy), so loading, freeing and loading it again keep the cache's hits;
- anything else: by identity, until `touch` says it changed.

A container that holds itself can't be fingerprinted: `CacheKeyError`.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import marshal
import os
import sys
import threading
import weakref
from typing import Any, cast

from typing_extensions import Buffer

from .exceptions import CacheKeyError

__all__ = ["PLAIN", "changes", "digest", "fingerprint", "fresh_key", "identity_digest", "touch"]

PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})  # immutable by value
_CONTAINERS = (list, tuple, dict, set, frozenset)
_tokens: dict[int, tuple[weakref.ref[Any], bytes, int]] = {}
_tokens_lock = threading.Lock()
_counter = itertools.count()


def digest(*parts: Buffer) -> bytes:
    """A 16-byte blake2b digest of *parts* (bytes, or arrays read in place), in order."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.digest()


def fresh_key() -> bytes:
    """A key that matches nothing before it: for values made by blocks that can't be cached."""
    return os.urandom(16)


def _token(obj: Any) -> bytes | None:
    """A digest naming *obj* for as long as it lives (and its `touch` count), or None."""
    key = id(obj)
    entry = _tokens.get(key)
    if entry is not None and entry[0]() is obj:
        return digest(entry[1], entry[2].to_bytes(8, "little"))

    def forget(_: object, key: int = key) -> None:
        _tokens.pop(key, None)

    try:
        ref = weakref.ref(obj, forget)
    except TypeError:
        return None  # not weak-referenceable: can't tell a new object from a reused address
    token = next(_counter).to_bytes(8, "little") + os.urandom(8)
    with _tokens_lock:
        _tokens[key] = (ref, token, 0)
    return digest(token, (0).to_bytes(8, "little"))


def touch(obj: Any) -> None:
    """Mark *obj* as changed, so cached results that read it are not reused.

    Models are watched without it (see `fingerprint`); call it after changing another kind of
    component in place (a tokenizer's vocabulary, a custom object's attributes), or a model's
    weights through ``.data``.
    """
    entry = _tokens.get(id(obj))
    if entry is not None and entry[0]() is obj:
        with _tokens_lock:
            _tokens[id(obj)] = (entry[0], entry[1], entry[2] + 1)


def fingerprint(value: Any, *, hash_tensors: bool = True) -> bytes | None:
    """Digest a value so that the digest changes whenever the value does, or return None.

    None means "can't be fingerprinted": the block reading it is not served from a cache.

    Examples:
        >>> fingerprint(3) == fingerprint(3), fingerprint(3) == fingerprint(3.0)
        (True, False)
        >>> fingerprint([1, "a", (2.0, None)]) == fingerprint([1, "a", (2.0, None)])
        True
    """
    return _fingerprint(value, hash_tensors, set())


def _fingerprint(value: Any, hash_tensors: bool, seen: set[int]) -> bytes | None:
    kind: type[object] = type(cast("object", value))
    if kind in PLAIN:
        return digest(kind.__name__.encode(), repr(value).encode())
    if kind in _CONTAINERS:
        return _container(value, kind, hash_tensors, seen)
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return _tensor(value, hash_tensors=hash_tensors)
        if isinstance(value, torch.Generator):
            return digest(b"generator", value.get_state().numpy().tobytes())
        if isinstance(value, torch.nn.Module):
            return module_digest(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return _array(value, hash_tensors, seen)
        if isinstance(value, numpy.generic):
            return digest(b"npscalar", value.dtype.str.encode(), value.tobytes())
    if is_pil_image(value):
        meta = f"{value.size}|{value.mode}".encode()
        return digest(b"image", meta, value.tobytes())
    lazy = sys.modules.get("modblocks._lazy")
    if lazy is not None and kind is lazy.Lazy:
        return _lazy(value, hash_tensors, seen)
    token = _token(value)
    return None if token is None else digest(b"object", token)


def _container(value: Any, kind: type[object], hash_tensors: bool, seen: set[int]) -> bytes | None:
    name = kind.__name__.encode()
    if kind not in (set, frozenset):
        try:
            # One pass at C speed over plain values (version 2: no back-references, so equal
            # values always give equal bytes). Anything else in it raises ValueError.
            return digest(b"marshal", name, marshal.dumps(value, 2))
        except ValueError:
            pass
    if id(value) in seen:
        msg = (
            f"a {kind.__name__} given to the run contains itself, so the cache can't name its "
            "value. Pass a value without cycles, or run without a cache."
        )
        raise CacheKeyError(msg)
    seen.add(id(value))
    try:
        if kind is dict:
            items = [
                (_fingerprint(k, hash_tensors, seen), _fingerprint(v, hash_tensors, seen))
                for k, v in value.items()
            ]
            if any(k is None or v is None for k, v in items):
                return None
            return digest(b"dict", *(k + v for k, v in items if k is not None and v is not None))
        parts = [_fingerprint(v, hash_tensors, seen) for v in value]
        if any(p is None for p in parts):
            return None
        known = [p for p in parts if p is not None]
        if kind in (set, frozenset):
            known.sort()  # a set has no order: equal sets give equal digests
        return digest(name, *known)
    finally:
        seen.discard(id(value))


def _tensor(tensor: Any, *, hash_tensors: bool) -> bytes | None:
    meta = f"{tuple(tensor.shape)}|{tensor.dtype}|{tensor.device}".encode()
    if hash_tensors or tensor.is_inference():
        # By content: inference tensors keep no version counter, and writes through
        # `.numpy()` or `.data` bypass it.
        import torch

        data = tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8)
        return digest(b"content", meta, data.numpy().data)  # hashed in place, not copied
    token = _token(tensor)
    if token is None:
        return None
    return digest(b"tensor", meta, token, tensor._version.to_bytes(8, "little"))


def _array(value: Any, hash_tensors: bool, seen: set[int]) -> bytes | None:
    meta = f"{value.shape}|{value.dtype.str}".encode()
    if value.dtype == object:
        inner = _fingerprint(value.tolist(), hash_tensors, seen)
        return None if inner is None else digest(b"objects", meta, inner)
    import numpy as np

    return digest(b"ndarray", meta, np.ascontiguousarray(value).view(np.uint8).data)


def is_pil_image(value: Any) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)


# -- models ----------------------------------------------------------------------------------

_structure = [0]  # bumped whenever any module, parameter or buffer is registered anywhere
_watching = [False]
_layouts: weakref.WeakKeyDictionary[Any, tuple[int, list[Any], list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _watch_registrations() -> None:
    """Count registrations of submodules, parameters and buffers (torch's global hooks)."""
    if _watching[0]:
        return
    import torch

    def bump(*_: object) -> None:
        _structure[0] += 1

    hooks = torch.nn.modules.module
    hooks.register_module_module_registration_hook(bump)
    hooks.register_module_parameter_registration_hook(bump)
    hooks.register_module_buffer_registration_hook(bump)
    _watching[0] = True


def _layout(module: Any) -> tuple[list[Any], list[Any]]:
    """The module's parameters and buffers, and its LoRA layers (remade when any changes)."""
    _watch_registrations()
    epoch = _structure[0]
    layout = _layouts.get(module)
    if layout is None or layout[0] != epoch:
        tensors = [*module.parameters(), *module.buffers()]
        tuners = [m for m in module.modules() if hasattr(m, "merged_adapters")]
        layout = (epoch, tensors, tuners)
        _layouts[module] = layout
    return layout[1], layout[2]


def _adapters(tuners: list[Any]) -> bytes:
    return repr(
        [
            (
                list(t.merged_adapters),
                list(getattr(t, "active_adapters", ())),
                sorted(getattr(t, "scaling", {}).items()),
            )
            for t in tuners
        ]
    ).encode()


def module_digest(module: Any) -> bytes | None:
    """A digest of a model that changes when it does, without `touch` (see `fingerprint`).

    Seen: submodules, parameters or buffers added, replaced or removed (loading or unloading a
    LoRA, swapping a layer); each parameter's and buffer's storage, dtype, device and version
    counter (``.to()``, ``load_state_dict``, optimizer steps, in-place ops); the merged and
    active adapters and scales of LoRA layers (``fuse_lora``, ``set_adapters``). Not seen:
    writes through ``param.data`` by hand (call `touch`). Costs a pass over the parameters.
    """
    token = _token(module)
    if token is None:
        return None
    tensors, tuners = _layout(module)
    numbers = array.array("q", [len(tensors)])
    try:
        for tensor in tensors:
            # dtypes are singletons: their ids tell them apart at no cost.
            numbers.extend(
                (tensor.data_ptr(), tensor._version, id(tensor.dtype), tensor.get_device())
            )
    except RuntimeError:
        return None  # inference tensors (made in inference mode) keep no version counter
    return digest(b"module", token, numbers.tobytes(), _adapters(tuners))


def changes(value: Any) -> bytes | None:
    """What changes when *value* is changed in place, but not when it is only moved.

    For a model: its parameters and buffers (which objects, their version counters and
    dtypes) and its LoRA layers, as `module_digest` sees them, but not where the weights are
    (an offloading policy moves them); for anything else, its `touch` count. A lazy
    component compares it with the value it had when it loaded. None: can't tell.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        tensors, tuners = _layout(value)
        numbers = array.array("q", [len(tensors)])
        try:
            for tensor in tensors:
                numbers.extend((id(tensor), tensor._version, id(tensor.dtype)))
        except RuntimeError:
            return None  # inference tensors keep no version counter
        return digest(b"changes", numbers.tobytes(), _adapters(tuners))
    token = _token(value)
    entry = _tokens.get(id(value))
    if token is None or entry is None:
        return None
    return entry[2].to_bytes(8, "little")


def _lazy(lazy: Any, hash_tensors: bool, seen: set[int]) -> bytes | None:
    """A lazy component: itself while its loaded copy (if any) is as it loaded, else that."""
    token = _token(lazy)
    if token is None:  # pragma: no cover - a `Lazy` takes weak references
        return None
    changed = lazy.changed_copy()
    if changed is None:
        return digest(b"lazy", token)  # the same whether loaded now or not: a free keeps hits
    inner = _fingerprint(changed, hash_tensors, seen)
    return None if inner is None else digest(b"lazy", token, inner)


# -- identities ------------------------------------------------------------------------------


def identity_digest(*parts: Any) -> bytes:
    """Digest what makes a block itself: its code, names, defaults and bound values."""
    pieces: list[bytes] = []
    for part in parts:
        if callable(part) and hasattr(part, "__code__"):
            code = part.__code__
            # The function object itself too: a factory's blocks share code but not closures.
            pieces += [
                _token(part) or fresh_key(),
                f"{part.__module__}.{part.__qualname__}".encode(),
                code.co_code,
                repr(code.co_consts).encode(),
                repr(code.co_names).encode(),
            ]
            continue
        try:
            fp = fingerprint(part)
        except CacheKeyError:
            fp = None
        pieces.append(fp if fp is not None else fresh_key())
    return digest(*pieces)
