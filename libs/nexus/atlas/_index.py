"""Secondary indexes: a hash index answers ``eq``/``in``; a sorted index also answers ranges."""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedDict

from nexus.atlas._filter import RANK_NUMBER, RANK_STRING, Condition, get_path, is_missing, value_key


class Index:
    """Maps the value at one field path to the ids of the views holding it."""

    kind = "hash"

    def __init__(self, field: str) -> None:
        self.field = field
        self.path = tuple(field.split("."))
        self._single = self.path[0] if len(self.path) == 1 else None
        self._buckets: dict[Any, set[str]] = {}

    def _key_of(self, data: Any) -> Any:
        if self._single is not None and type(data) is dict:
            value = data.get(self._single, _ABSENT)
            if value is _ABSENT:
                return _ABSENT
        else:
            value = get_path(data, self.path)
            if is_missing(value):
                return _ABSENT
        return value_key(value)

    def add(self, view_id: str, data: Any) -> None:
        key = self._key_of(data)
        if key is _ABSENT:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = {view_id}
        else:
            bucket.add(view_id)

    def remove(self, view_id: str, data: Any) -> None:
        key = self._key_of(data)
        if key is _ABSENT:
            return
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(view_id)
            if not bucket:
                del self._buckets[key]

    def clear(self) -> None:
        self._buckets.clear()

    def answers(self, condition: Condition) -> bool:
        return condition.op in ("eq", "in")

    def lookup(self, condition: Condition) -> set[str]:
        """The ids of views matching ``condition`` (which ``answers`` accepted)."""
        if condition.op == "eq":
            return self._buckets.get(value_key(condition.value), _EMPTY)
        out: set[str] = set()
        for value in condition.value:
            out |= self._buckets.get(value_key(value), _EMPTY)
        return out


class SortedIndex(Index):
    """A hash index that also keeps its values sorted, for ``gt``/``gte``/``lt``/``lte``."""

    kind = "sorted"

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self._sorted: SortedDict = SortedDict()
        self._buckets = self._sorted

    def answers(self, condition: Condition) -> bool:
        return condition.op in ("eq", "in", "gt", "gte", "lt", "lte")

    def lookup(self, condition: Condition) -> set[str]:
        if condition.op in ("eq", "in"):
            return super().lookup(condition)
        rank, bound = value_key(condition.value)
        if rank not in (RANK_NUMBER, RANK_STRING):
            return set()
        # Keys are (rank, value): a bare (rank,) sorts before every key of that rank and
        # (rank + 1,) after them, so ranges never cross from numbers into strings.
        if condition.op in ("gt", "gte"):
            keys = self._sorted.irange((rank, bound), (rank + 1,), inclusive=(condition.op == "gte", False))
        else:
            keys = self._sorted.irange((rank,), (rank, bound), inclusive=(True, condition.op == "lte"))
        out: set[str] = set()
        for key in keys:
            out |= self._buckets[key]
        return out


_ABSENT: Any = object()
_EMPTY: set[str] = set()
