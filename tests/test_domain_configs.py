"""The pure configuration rules: merge, diff, checksum, limits (no loop, no I/O)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fpcd.domain.configs import (
    canonical_json,
    check_limits,
    checksum,
    deep_merge,
    diff,
    effective_configs,
    valid_name,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=4), json_values, max_size=4)


def apply_ops(doc: Any, ops: list[Any]) -> Any:
    """Apply diff ops (add/remove/replace on JSON pointers) to a copy of `doc`."""
    import copy

    doc = copy.deepcopy(doc)
    for op in ops:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op.path.split("/")[1:]]
        if op.path == "":
            doc = op.value
            continue
        parent = doc
        for token in tokens[:-1]:
            parent = parent[token]
        if op.op == "remove":
            del parent[tokens[-1]]
        else:
            parent[tokens[-1]] = op.value
    return doc


@given(json_objects, json_objects)
def test_diff_then_apply_gives_the_new_document(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert apply_ops(old, diff(old, new)) == new


@given(json_objects)
def test_diff_of_equal_documents_is_empty(doc: dict[str, Any]) -> None:
    assert diff(doc, doc) == []


@given(json_objects, json_objects)
def test_merge_keeps_every_key_and_override_wins(
    base: dict[str, Any], over: dict[str, Any]
) -> None:
    merged = deep_merge(base, over)
    assert set(merged) == set(base) | set(over)
    for key, value in over.items():
        if not (isinstance(value, dict) and isinstance(base.get(key), dict)):
            assert merged[key] == value
    assert deep_merge(base, {}) == base
    assert deep_merge({}, over) == over


def test_merge_is_deep_for_objects_only() -> None:
    base = {"db": {"host": "a", "port": 1}, "list": [1, 2], "x": {"y": 1}}
    over = {"db": {"host": "b"}, "list": [3], "x": 5}
    assert deep_merge(base, over) == {"db": {"host": "b", "port": 1}, "list": [3], "x": 5}
    assert base == {"db": {"host": "a", "port": 1}, "list": [1, 2], "x": {"y": 1}}


@given(json_objects)
def test_checksum_ignores_key_order(doc: dict[str, Any]) -> None:
    reordered = dict(reversed(list(doc.items())))
    assert checksum(doc) == checksum(reordered)
    assert canonical_json(doc) == canonical_json(reordered)


def test_checksum_distinguishes_types() -> None:
    assert checksum({"a": 1}) != checksum({"a": "1"})
    assert checksum({"a": 1}) != checksum({"a": True})


def test_limits_never_recurse() -> None:
    doc: Any = {}
    node = doc
    for _ in range(100_000):  # far deeper than Python's recursion limit
        node["a"] = {}
        node = node["a"]
    errors = check_limits(doc, max_depth=32, max_keys=10**9, path="$.config")
    assert len(errors) == 1 and errors[0].path.startswith("$.config.a.a")


def test_key_limit_counts_all_levels() -> None:
    doc = {"a": {"b": 1, "c": 2}, "d": [{"e": 1}]}
    assert check_limits(doc, max_depth=10, max_keys=5, path="$") == []
    assert check_limits(doc, max_depth=10, max_keys=4, path="$")[0].path == "$"


def test_names() -> None:
    for good in ("web", "web-api", "web_api.v2", "A1", "x" * 128):
        assert valid_name(good)
    for bad in ("", "-web", ".hidden", "a/b", "a..b", "a b", "x" * 129, "é", "a;b", "$x"):
        assert not valid_name(bad)


def test_effective_configs_of_default_cover_every_environment() -> None:
    layers = {"default": {"a": 1}, "prod": {"b": 2}, "dev": {"a": 3}}
    docs = dict(effective_configs("default", {"a": 9}, layers))
    assert docs == {"dev": {"a": 3}, "prod": {"a": 9, "b": 2}}
    assert dict(effective_configs("default", {"a": 9}, {})) == {"default": {"a": 9}}
    assert dict(effective_configs("prod", {"c": 1}, layers)) == {"prod": {"a": 1, "c": 1}}
