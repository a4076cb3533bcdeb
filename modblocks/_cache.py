"""Incremental re-execution: block results stored under keys made from their inputs.

A block's key is its identity digest (code, name, renames, defaults) followed by one
16-byte digest per input: the output key of the block that produced the value (a Merkle
chain), or a fingerprint of a value given by the caller. Keys are tuples of these digests,
so looking one up costs a dict probe and no hashing; the digest of a key (from which its
output keys derive) is computed once, when its result is stored. Each key costs O(inputs),
never a walk over the ancestors, so a fully cached chain stays linear in its length.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs

__all__ = ["Cache", "CacheStats", "fingerprint", "identity_digest", "touch"]

PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})  # immutable by value
_ABSENT = b"\x00absent\x00" * 2  # 16 bytes: an optional input that was not given
_tokens: dict[int, tuple[weakref.ref[Any], bytes, int]] = {}
_tokens_lock = threading.Lock()
_counter = itertools.count()


_blake2b = hashlib.blake2b


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.digest()


def fresh_key() -> bytes:
    """A key that matches nothing before it: for values made by blocks that can't be cached."""
    return os.urandom(16)


def _token(obj: Any) -> bytes | None:
    """A digest naming *obj* for as long as it lives (and its library version), or None."""
    key = id(obj)
    entry = _tokens.get(key)
    if entry is not None and entry[0]() is obj:
        return _digest(entry[1], entry[2].to_bytes(8, "little"))

    def forget(_: object, key: int = key) -> None:
        _tokens.pop(key, None)

    try:
        ref = weakref.ref(obj, forget)
    except TypeError:
        return None  # not weak-referenceable: can't tell a new object from a reused address
    token = next(_counter).to_bytes(8, "little") + os.urandom(8)
    with _tokens_lock:
        _tokens[key] = (ref, token, 0)
    return _digest(token, (0).to_bytes(8, "little"))


def touch(obj: Any) -> None:
    """Mark *obj* (a component) as changed, so cached results that read it are not reused.

    `Pipeline.to` and `Pipeline.with_components` do this for you; call it after changing a
    model's weights in place (loading LoRA weights, fusing, ...).
    """
    entry = _tokens.get(id(obj))
    if entry is not None and entry[0]() is obj:
        with _tokens_lock:
            _tokens[id(obj)] = (entry[0], entry[1], entry[2] + 1)


def fingerprint(value: Any, *, hash_tensors: bool = False) -> bytes | None:
    """Digest a value: plain values by value, tensors by identity and version, or None.

    None means "can't be fingerprinted": the block reading it is not served from a cache.

    Example:
        >>> fingerprint(3) == fingerprint(3), fingerprint(3) == fingerprint(3.0)
        (True, False)
    """
    kind: type[object] = type(cast("object", value))
    if kind in PLAIN:
        return _digest(kind.__name__.encode(), repr(value).encode())
    if kind in (tuple, list):
        parts = [fingerprint(v, hash_tensors=hash_tensors) for v in value]
        if any(p is None for p in parts):
            return None
        return _digest(kind.__name__.encode(), *(p for p in parts if p is not None))
    if kind is dict:
        items = [
            (fingerprint(k), fingerprint(v, hash_tensors=hash_tensors)) for k, v in value.items()
        ]
        if any(k is None or v is None for k, v in items):
            return None
        return _digest(b"dict", *(k + v for k, v in items if k is not None and v is not None))
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return _tensor_fingerprint(value, hash_tensors=hash_tensors)
        if isinstance(value, torch.Generator):
            state = value.get_state()
            return _digest(b"generator", state.numpy().tobytes())
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype != object:
        # Arrays and images by content: callers edit them in place between calls (one pass
        # over the data, about a millisecond for a 512x512 image).
        meta = f"{value.shape}|{value.dtype.str}".encode()
        return _digest(b"ndarray", meta, numpy.ascontiguousarray(value).tobytes())
    if _is_pil_image(value):
        meta = f"{value.size}|{value.mode}".encode()
        return _digest(b"image", meta, value.tobytes())
    token = _token(value)
    return None if token is None else _digest(b"object", token)


def _tensor_fingerprint(tensor: Any, *, hash_tensors: bool) -> bytes | None:
    meta = f"{tuple(tensor.shape)}|{tensor.dtype}|{tensor.device}".encode()
    if hash_tensors:
        data = tensor.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8)
        return _digest(b"content", meta, data.numpy().tobytes())
    if tensor.is_inference():
        # Inference tensors keep no version counter, so an in-place change would go unseen:
        # name them by content instead.
        return _tensor_fingerprint(tensor, hash_tensors=True)
    token = _token(tensor)
    if token is None:
        return None
    version = tensor._version
    return _digest(b"tensor", meta, token, version.to_bytes(8, "little"))


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
        fp = fingerprint(part)
        pieces.append(fp if fp is not None else fresh_key())
    return _digest(*pieces)


def is_plain(value: Any) -> bool:
    """Whether *value* is a plain immutable value, or a tuple or list of them."""
    kind = cast("type[object]", type(value))
    if kind in (tuple, list):
        return all(is_plain(v) for v in value)
    return kind in PLAIN


class Unstorable(Exception):
    """A value the cache can't keep a private copy of (it is then not stored)."""


def private(value: Any) -> Any:
    """A copy of *value* that shares nothing the caller could change, for the cache to keep.

    Stored results are handed to later runs, so neither the run that stored them nor the one
    served may change them: schedulers are stepped, arrays and images edited in place. Plain
    values are immutable and shared; so are tensors that have a version counter (the cache
    notices in-place changes) and modules (components, tracked with `touch`). Inference
    tensors have no counter and are copied; anything else is deep-copied.
    """
    kind = cast("type[object]", type(value))
    if kind in PLAIN:
        return value
    if kind is tuple:
        return tuple(private(v) for v in value)
    if kind is list:
        return [private(v) for v in value]
    if kind is dict:
        return {k: private(v) for k, v in value.items()}
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return value.clone() if value.is_inference() else value
        if isinstance(value, torch.nn.Module | torch.dtype | torch.device):
            return value
    try:
        return copy.deepcopy(value)
    except Exception as exc:  # whatever deepcopy raises, the value isn't kept
        raise Unstorable(type(value).__name__) from exc


def generators_in(values: Iterable[Any]) -> list[Any]:
    """The torch generators among *values* (alone or in lists), in order."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    found: list[Any] = []
    for value in values:
        items = value if type(value) in (list, tuple) else (value,)
        found += [g for g in items if isinstance(g, torch.Generator)]
    return found


def nbytes(values: Iterable[Any]) -> int:
    """The bytes of the tensors, arrays and images among *values* (alone or in lists)."""
    torch = sys.modules.get("torch")
    total = 0
    for value in values:
        if type(value) in (list, tuple):
            total += nbytes(value)
        elif torch is not None and isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif type(getattr(value, "nbytes", None)) is int:  # NumPy arrays
            total += value.nbytes
        elif _is_pil_image(value):
            total += value.width * value.height * len(value.getbands())
    return total


def _is_pil_image(value: Any) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)


@attrs.frozen
class CacheStats:
    """Counters of a `Cache`: hits, misses, stored entries and bytes, evictions."""

    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int


Key = tuple[bytes, ...]
"""A unit's identity digest and its inputs' digests: what its stored result is filed under."""


@attrs.frozen
class Entry:
    outputs: tuple[Any, ...]
    keys: tuple[bytes, ...]  # one per output, for the units that read them
    generator_states: tuple[Any, ...]
    nbytes: int
    versions: tuple[int, ...]  # of the tensors among the outputs, when stored


def versions(values: Iterable[Any]) -> tuple[int, ...]:
    """The version counters of the (non-inference) tensors among *values* and in their lists."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    found: list[int] = []
    for value in values:
        if type(value) in (list, tuple):
            found += versions(value)
        elif isinstance(value, torch.Tensor) and not value.is_inference():
            found.append(value._version)
    return tuple(found)


class Cache:
    """Stores block results by key so unchanged blocks are not run again.

    Pass it as ``mb.Pipeline(..., cache=mb.Cache())`` or ``node.run(..., cache=cache)``. A
    block whose code, inputs and components are unchanged returns its stored outputs; change
    the seed and only the blocks that read the generator (and what follows them) run again.

    Args:
        max_entries: the most results kept (least recently used go first); None for no limit.
        max_bytes: the most tensor bytes kept; None for no limit.
        hash_tensors: fingerprint tensors by content (exact, costs a pass over the data)
            instead of by identity and version counter (free, the default).
        check_inplace: raise when a block changes one of its input tensors in place, which
            would corrupt results cached or shared with earlier states.

    Example:
        >>> cache = Cache(max_entries=100)
        >>> cache.stats().entries
        0
    """

    def __init__(
        self,
        *,
        max_entries: int | None = 1024,
        max_bytes: int | None = None,
        hash_tensors: bool = False,
        check_inplace: bool = False,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hash_tensors = hash_tensors
        self.check_inplace = check_inplace
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._bytes = self._evictions = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # Entries hold tensors of this process and a lock: a copy starts empty.
        options = (self.max_entries, self.max_bytes, self.hash_tensors, self.check_inplace)
        return (_empty_cache, options)

    def get(self, key: Key) -> Entry | None:
        """Return the entry stored under *key* (and mark it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.versions and versions(entry.outputs) != entry.versions:
                # Someone changed a stored result in place: it can't be served any more.
                del self._entries[key]
                self._bytes -= entry.nbytes
                entry = None
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(
        self, key: Key, outputs: tuple[Any, ...], generator_states: tuple[Any, ...]
    ) -> tuple[bytes, ...]:
        """Store *outputs* under *key* (evicting the least recently used beyond the limits).

        Returns the outputs' keys, whether or not the result could be kept.
        """
        keys = output_keys(key, len(outputs))
        size = nbytes(outputs)
        if self.max_bytes is not None and size > self.max_bytes:
            return keys
        try:
            # A private copy: the run goes on with (and may hand out) the originals.
            outputs = tuple(private(v) for v in outputs)
        except Unstorable:
            return keys
        entry = Entry(outputs, keys, generator_states, size, versions(outputs))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += size
            while self._entries and (
                (self.max_entries is not None and len(self._entries) > self.max_entries)
                or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evictions += 1
        return keys

    def clear(self) -> None:
        """Drop every stored result (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """Return the hits, misses, entries, bytes and evictions so far."""
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._entries), self._bytes, self._evictions
            )

    def __repr__(self) -> str:
        s = self.stats()
        return f"Cache(entries={s.entries}, bytes={s.bytes}, hits={s.hits}, misses={s.misses})"


def _empty_cache(
    max_entries: int | None, max_bytes: int | None, hash_tensors: bool, check_inplace: bool
) -> Cache:
    return Cache(
        max_entries=max_entries,
        max_bytes=max_bytes,
        hash_tensors=hash_tensors,
        check_inplace=check_inplace,
    )


def key_of(
    keys: dict[str, bytes], values: dict[str, Any], name: str, hash_tensors: bool
) -> bytes | None:
    """The digest of the value called *name*: its producer's key, else its fingerprint."""
    known = keys.get(name)
    if known is not None:
        return known
    if name not in values:
        return _ABSENT
    value = values[name]
    fp = fingerprint(value, hash_tensors=hash_tensors)
    if fp is not None and not generators_in((value,)):
        keys[name] = fp  # a generator's digest changes as blocks draw from it: never kept
    return fp


KeyFunction = Callable[[bytes, dict[str, bytes], dict[str, Any], bool], Key | None]


@functools.cache
def key_function(names: tuple[str, ...]) -> KeyFunction:
    """A function computing the key of a unit that reads *names*, or None (see `unit_key`).

    Generated as straight-line code, because it runs for every block of every cached run: it
    allocates the key tuple and nothing else.
    """
    lines = ["def unit_key(identity, keys, values, hash_tensors):", "    get = keys.get"]
    for i, name in enumerate(names):
        lines.append(f"    p{i} = get({name!r}) or key_of(keys, values, {name!r}, hash_tensors)")
        lines.append(f"    if p{i} is None:\n        return None")
    lines.append(f"    return ({', '.join(['identity', *(f'p{i}' for i in range(len(names)))])},)")
    namespace: dict[str, Any] = {"key_of": key_of}
    exec(compile("\n".join(lines), f"<key of {', '.join(names)}>", "exec"), namespace)  # noqa: S102
    function: KeyFunction = namespace["unit_key"]
    return function


def unit_key(
    identity: bytes,
    names: tuple[str, ...],
    keys: dict[str, bytes],
    values: dict[str, Any],
    hash_tensors: bool,
) -> Key | None:
    """The key of a block or loop: its identity and its inputs' digests, or None.

    An input's digest is the key of the output that produced it, else the fingerprint of the
    value given; None when a value can't be fingerprinted (the unit is then not cached).
    """
    return key_function(names)(identity, keys, values, hash_tensors)


def output_keys(key: Key, count: int) -> tuple[bytes, ...]:
    """The keys of the *count* outputs of the unit filed under *key*.

    Every part is 16 bytes, so joining them is unambiguous; the position goes in the last
    two bytes of the digest.
    """
    stem = _blake2b(b"".join(key), digest_size=16).digest()[:14]
    return tuple(stem + position.to_bytes(2, "little") for position in range(count))
