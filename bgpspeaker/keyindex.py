"""An index from a name to the keys filed under it, where a name almost always has one key (pure).

That one key is stored as itself, and a set only for two or more: a set per name is 216
bytes, and these indexes have one name per Service (the allocator's Services by identity,
the informer's EndpointSlices by Service: 2.3 MB at 10,000 Services each, tracemalloc).
An emptied name leaves no entry behind. Keys must not themselves be sets.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, TypeVar, Union

_Name = TypeVar("_Name")
_Key = TypeVar("_Key", bound=Hashable)
OneOrSet = Union[_Key, set[_Key]]


def keys_of(index: Mapping[_Name, OneOrSet[_Key]], name: _Name) -> Iterable[_Key]:
    """The keys filed under `name` (none if it has no entry)."""
    found = index.get(name)
    return () if found is None else found if isinstance(found, set) else (found,)


def index_key(index: dict[_Name, OneOrSet[_Key]], name: _Name, key: _Key) -> None:
    """File `key` under `name` (again: nothing changes)."""
    found = index.get(name)
    if found is None:
        index[name] = key
    elif isinstance(found, set):
        found.add(key)
    elif found != key:
        index[name] = {found, key}


def unindex_key(index: dict[_Name, OneOrSet[_Key]], name: _Name, key: _Key) -> None:
    """Take `key` out of `name`'s keys (not filed there: nothing changes)."""
    found = index.get(name)
    if isinstance(found, set):
        found.discard(key)
        if len(found) <= 1:  # back to one key (or none: the entry goes, no empty set left behind)
            if found:
                index[name] = next(iter(found))
            else:
                del index[name]
    elif found is not None and found == key:
        del index[name]
