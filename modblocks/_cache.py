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
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs

from ._fingerprint import PLAIN, fingerprint, is_pil_image, touch
from .exceptions import InputTypeError

__all__ = ["Cache", "CacheStats", "fingerprint", "private", "touch"]

_ABSENT = b"\x00absent\x00" * 2  # 16 bytes: an optional input that was not given
_blake2b = hashlib.blake2b


def is_plain(value: Any) -> bool:
    """Whether *value* is a plain immutable value, or a tuple or list of them."""
    kind = cast("type[object]", type(value))
    if kind in (tuple, list):
        return all(is_plain(v) for v in value)
    return kind in PLAIN


class Unstorable(Exception):
    """A value the cache can't keep a private copy of (it is then not stored)."""


def private(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of *value* that shares nothing anyone could change, for the cache to keep or serve.

    Stored results are handed to later runs and to callers, who may change them in place
    (``images *= 255``, a scheduler stepped, a tensor edited through ``.numpy()``): the cache
    keeps a copy, and serves a copy of it. Plain values are immutable and shared, models are
    components (shared, and watched by their fingerprint); tensors are cloned, arrays and
    images copied, containers copied through, anything else deep-copied. *memo* maps
    ``id(original)`` to the copy already made, so a value stored twice is copied once.
    """
    kind = cast("type[object]", type(value))
    if kind in PLAIN:
        return value
    if memo is not None:
        found = memo.get(id(value))
        if found is not None and found[0] is value:
            return found[1]
    copied = _copy(value, memo)
    if memo is not None:
        memo[id(value)] = (value, copied)  # the original too: its id stays its own
    return copied


def _copy(value: Any, memo: dict[int, Any] | None) -> Any:
    kind = cast("type[object]", type(value))
    if kind is tuple:
        return tuple(private(v, memo) for v in value)
    if kind is list:
        return [private(v, memo) for v in value]
    if kind is dict:
        return {k: private(v, memo) for k, v in value.items()}
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, torch.nn.Module | torch.dtype | torch.device):
            return value
        if isinstance(value, torch.Generator):
            clone = torch.Generator(device=value.device)
            clone.set_state(value.get_state())
            return clone
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype != object:
        return value.copy()
    if is_pil_image(value):
        return value.copy()
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
        elif is_pil_image(value):
            total += value.width * value.height * len(value.getbands())
    return total


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
    """A stored result: outputs (private copies), their keys, the generators' states after."""

    outputs: tuple[Any, ...]
    keys: tuple[bytes, ...]  # one per output, for the units that read them
    generator_states: tuple[Any, ...]
    nbytes: int
    plain: bool = attrs.field(init=False)  # every output a plain value: served as it is

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "plain", all(type(v) in PLAIN for v in self.outputs))


class Cache:
    """Stores block results by key so unchanged blocks are not run again.

    Pass it as ``mb.Pipeline(..., cache=mb.Cache())`` or ``node.run(..., cache=cache)``. A
    block whose code, inputs and components are unchanged returns its stored outputs; change
    the seed and only the blocks that read the generator (and what follows them) run again.

    Args:
        max_entries: the most results kept (least recently used go first); None for no limit.
        max_bytes: the most tensor bytes kept; None for no limit.
        hash_tensors: fingerprint the tensors given to a run by content (the default: exact,
            about a millisecond per megabyte), or, with False, by identity and version
            counter (free, but blind to changes made through ``.numpy()`` or ``.data``).
        check_inplace: raise when a block changes one of its input tensors in place, which
            would corrupt results cached or shared with earlier states.

    Examples:
        >>> cache = Cache(max_entries=100)
        >>> cache.stats().entries
        0
    """

    def __init__(
        self,
        *,
        max_entries: int | None = 1024,
        max_bytes: int | None = None,
        hash_tensors: bool = True,
        check_inplace: bool = False,
    ) -> None:
        for name, limit in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if limit is not None and (
                not isinstance(cast("object", limit), int) or isinstance(limit, bool) or limit < 0
            ):
                msg = f"`Cache({name}=...)` is a whole number of 0 or more, or None; got {limit!r}."
                raise InputTypeError(msg, name=name)
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
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(
        self,
        key: Key,
        outputs: tuple[Any, ...],
        generator_states: tuple[Any, ...],
        memo: dict[int, Any] | None = None,
    ) -> tuple[bytes, ...]:
        """Store *outputs* under *key* (evicting the least recently used beyond the limits).

        Returns the outputs' keys, whether or not the result could be kept. *memo* (see
        `private`) lets the outputs of one run share their copies across entries.
        """
        keys = output_keys(key, len(outputs))
        size = nbytes(outputs)
        if self.max_bytes is not None and size > self.max_bytes:
            return keys
        try:
            # A private copy: the run goes on with (and may hand out) the originals.
            outputs = tuple(private(v, memo) for v in outputs)
        except Unstorable:
            return keys
        entry = Entry(outputs, keys, generator_states, size)
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
