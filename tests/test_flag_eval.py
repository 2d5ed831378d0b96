"""Flag evaluation (pure): every step of the brief's order, and the bucketing properties."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpcd.domain.errors import Invalid
from fpcd.domain.flags import (
    CompiledFlag,
    EvaluationContext,
    FlagDefinition,
    bucket,
    compile_flag,
    derive_key,
    evaluate,
    semver_key,
    validate_definition,
    variant_slot,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
#: No other flags (for evaluations with no dependencies).
NO_FLAGS: dict[str, CompiledFlag] = {}


def flag(key: str = "f", **fields: Any) -> CompiledFlag:
    definition = msgspec.convert({"name": key, "enabled": True, **fields}, FlagDefinition)
    return compile_flag(key, 1, definition)


def ctx(**fields: Any) -> EvaluationContext:
    return msgspec.convert(fields, EvaluationContext)


def run(f: CompiledFlag, others: dict[str, CompiledFlag] | None = None, **context: Any) -> Any:
    table = {f.key: f, **(others or {})}
    return evaluate(f, ctx(**context), NOW, table.get)


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """An independent reference implementation (what another SDK would use)."""
    c1, c2, h = 0xCC9E2D51, 0x1B873593, seed
    length = len(data)
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
        h = ((h << 13) | (h >> 19)) & 0xFFFFFFFF
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    tail = data[length - length % 4 :]
    k = 0
    for i, byte in enumerate(tail):
        k |= byte << (8 * i)
    if tail:
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


@given(st.text(max_size=40), st.text(max_size=40))
def test_bucket_matches_the_reference_formula(key: str, user: str) -> None:
    expected = murmur3_x86_32(f"{key}:{user}".encode()) % 100_000
    assert bucket(key, user) == expected
    assert (
        variant_slot(key, user, 7_000) == murmur3_x86_32(f"{key}:variant:{user}".encode()) % 7_000
    )


@given(
    key=st.text(min_size=1, max_size=20),
    user=st.text(min_size=1, max_size=20),
    percentage=st.floats(0.001, 99.999),
    weights=st.lists(st.integers(1, 9), min_size=2, max_size=4),
)
def test_evaluate_decides_by_the_reference_formula(
    key: str, user: str, percentage: float, weights: list[int]
) -> None:
    """evaluate() hashes inline on its hot path: its decisions must stay the formula's."""
    variants = [{"id": f"v{i}", "weight": w} for i, w in enumerate(weights)]
    f = flag(key, rollout={"percentage": percentage}, variants=variants)
    result = evaluate(f, ctx(userId=user), NOW, {key: f}.get)
    inside = murmur3_x86_32(f"{key}:{user}".encode()) % 100_000 < round(percentage * 1000)
    assert result.enabled is inside
    if inside:
        slot = murmur3_x86_32(f"{key}:variant:{user}".encode()) % (sum(weights) * 1000)
        cumulative = [sum(weights[: i + 1]) * 1000 for i in range(len(weights))]
        assert result.variant == f"v{next(i for i, c in enumerate(cumulative) if slot < c)}"


def test_fixed_vectors_for_other_sdks() -> None:
    # Published in docs/flags.md so other SDKs can check their implementation.
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"hello") == 0x248BFA47
    assert (
        bucket("new_checkout_flow", "user-1")
        == murmur3_x86_32(b"new_checkout_flow:user-1") % 100_000
    )
    assert bucket("new_checkout_flow", "user-1") == 34_510


def test_key_is_derived_from_name() -> None:
    assert derive_key("New Checkout Flow") == "new_checkout_flow"
    assert derive_key("  --Dark   mode!! v2 ") == "dark_mode_v2"


# -- the evaluation order --------------------------------------------------------------


def test_unknown_flag() -> None:
    r = evaluate("nope", ctx(userId="u"), NOW, NO_FLAGS.get)
    assert (r.enabled, r.reason, r.error_code) == (False, "ERROR", "FLAG_NOT_FOUND")


def test_disabled_wins() -> None:
    f = flag(enabled=False, rollout={"userIds": ["u"]})
    r = run(f, userId="u")
    assert (r.enabled, r.reason) == (False, "DISABLED")


def test_environment_override() -> None:
    f = flag(
        enabled=False,
        rollout={"percentage": 0},
        variants=[{"id": "a", "weight": 1}],
        environments={
            "staging": {"enabled": True, "rollout": {"percentage": 100}},
            "prod": {"enabled": True, "variants": [{"id": "b", "weight": 1}]},
        },
    )
    assert run(f, userId="u", environment="production").reason == "DISABLED"
    staging = run(f, userId="u", environment="staging")
    assert staging.enabled and staging.variant == "a" and staging.reason == "STATIC"
    prod = run(f, userId="u", environment="prod")
    assert not prod.enabled and prod.detail == "rollout_0"  # percentage 0 kept from base


def test_dependencies() -> None:
    base = flag(
        "base",
        rollout={"userIds": ["in"], "percentage": 0},
        variants=[{"id": "x", "weight": 1}, {"id": "y", "weight": 0}],
    )
    child = flag("child", dependencies=["base"])
    by_variant = flag("by_variant", dependencies=[{"flag": "base", "variant": "y"}])
    others = {"base": base}
    assert run(child, others, userId="in").enabled
    r = run(child, others, userId="out")
    assert (r.enabled, r.reason, r.detail) == (False, "DISABLED", "dependency:base")
    assert run(by_variant, others, userId="in").detail == "dependency:base"
    missing = flag("orphan", dependencies=["gone"])
    assert run(missing, userId="in").detail == "dependency:gone"


def test_dates() -> None:
    f = flag(rollout={"startDate": "2026-07-01", "endDate": "2026-08-01T00:00:00Z"})
    early = evaluate(
        f, ctx(userId="u"), datetime(2026, 6, 30, tzinfo=UTC).timestamp(), NO_FLAGS.get
    )
    assert (early.enabled, early.reason, early.detail) == (False, "DISABLED", "scheduled")
    during = evaluate(
        f, ctx(userId="u"), datetime(2026, 7, 1, tzinfo=UTC).timestamp(), NO_FLAGS.get
    )
    assert during.enabled
    ended = evaluate(f, ctx(userId="u"), datetime(2026, 8, 1, tzinfo=UTC).timestamp(), NO_FLAGS.get)
    assert (ended.enabled, ended.detail) == (False, "ended")


def test_individual_targeting() -> None:
    f = flag(
        rollout={
            "percentage": 0,
            "userIds": ["vip"],
            "agentIds": ["bot-1"],
            "excludeUserIds": ["banned"],
        }
    )
    vip = run(f, userId="vip")
    assert (vip.enabled, vip.reason) == (True, "TARGETING_MATCH")
    assert run(f, userId="x", agentId="bot-1").enabled
    g = flag(rollout={"percentage": 100, "userIds": ["banned"], "excludeUserIds": ["banned"]})
    banned = run(g, userId="banned")
    assert (banned.enabled, banned.reason, banned.detail) == (False, "TARGETING_MATCH", "excluded")


def test_groups_regions_and_rules() -> None:
    f = flag(
        rollout={"userGroups": ["beta"], "regions": ["eu", "us"]},
        rules=[{"attribute": "plan", "operator": "in", "values": ["pro", "team"]}],
    )
    on = run(f, userId="u", userGroup="beta", region="eu", customAttributes={"plan": "pro"})
    assert (on.enabled, on.reason) == (True, "TARGETING_MATCH")
    for bad in (
        {"userGroup": "alpha", "region": "eu", "customAttributes": {"plan": "pro"}},
        {"userGroup": "beta", "region": "ap", "customAttributes": {"plan": "pro"}},
        {"userGroup": "beta", "region": "eu", "customAttributes": {"plan": "free"}},
        {"userGroup": "beta", "region": "eu"},
    ):
        r = run(f, userId="u", **bad)
        assert (r.enabled, r.reason, r.detail) == (False, "DEFAULT", "not_targeted")


@pytest.mark.parametrize(
    ("operator", "values", "value", "expected"),
    [
        ("eq", ["a"], "a", True), ("eq", [3], 3, True), ("eq", ["a"], "b", False),
        ("neq", ["a"], "b", True), ("neq", ["a"], "a", False),
        ("in", ["a", "b"], "b", True), ("in", ["a"], "c", False),
        ("not_in", ["a"], "c", True), ("not_in", ["a"], "a", False),
        ("contains", ["@corp"], "me@corp.com", True), ("contains", ["x"], "abc", False),
        ("contains", ["1"], 123, False),
        ("starts_with", ["adm", "root"], "admin", True), ("starts_with", ["x"], "admin", False),
        ("ends_with", [".io"], "a.io", True), ("ends_with", [".io"], "a.com", False),
        ("gt", [10], 11, True), ("gt", [10], 10, False), ("gt", [10], "11.5", True),
        ("gte", [10], 10, True), ("lt", [10], 9.9, True), ("lt", [10], 10, False),
        ("lte", [10], 10, True), ("gt", [10], "ten", False), ("gt", [10], True, False),
        ("semver_eq", ["1.2.3"], "v1.2.3", True), ("semver_gt", ["1.2.3"], "1.10.0", True),
        ("semver_gt", ["1.2.3"], "1.2.3-beta", False), ("semver_lt", ["2.0.0"], "2.0.0-rc.1", True),
        ("semver_lt", ["1.0.0"], "not-a-version", False),
        ("before", ["2026-01-01"], "2025-12-31T23:59:59Z", True),
        ("before", ["2026-01-01"], "2026-01-01", False),
        ("after", ["2026-01-01"], "2026-01-02", True), ("after", ["2026-01-01"], "junk", False),
    ],
)  # fmt: skip
def test_operators(operator: str, values: list[Any], value: Any, expected: bool) -> None:
    f = flag(rules=[{"attribute": "attr", "operator": operator, "values": values}])
    assert run(f, userId="u", customAttributes={"attr": value}).enabled is expected


def test_rules_on_context_fields_and_missing_attributes() -> None:
    f = flag(rules=[{"attribute": "region", "operator": "neq", "values": ["cn"]}])
    assert run(f, userId="u", region="eu").enabled
    assert not run(f, userId="u").enabled  # missing never matches, not even neq
    g = flag(rules=[{"attribute": "tier", "operator": "not_in", "values": ["x"]}])
    assert not run(g, userId="u").enabled


def test_percentage_edges_and_stickiness() -> None:
    all_on = flag(rollout={"percentage": 100})
    r = run(all_on)
    assert (r.enabled, r.reason) == (True, "STATIC")  # no id needed at 100%
    none = flag(rollout={"percentage": 0})
    assert not run(none, userId="u").enabled
    half = flag(rollout={"percentage": 50})
    r = run(half)
    assert (r.enabled, r.detail) == (False, "no_stickiness_id")
    # userId, else agentId, else sessionId
    ids = [f"id-{i}" for i in range(200)]
    for i in ids:
        by_user = run(half, userId=i, agentId="other", sessionId="other2")
        assert by_user.enabled == run(half, agentId=i).enabled == run(half, sessionId=i).enabled
        assert by_user.reason == "SPLIT"


def test_variants_carry_configuration() -> None:
    f = flag(
        variants=[
            {"id": "blue", "weight": 1, "configuration": {"color": "#00f"}},
            {"id": "zero", "weight": 0},
        ]
    )
    r = run(f, userId="u")
    assert (r.variant, r.configuration) == ("blue", {"color": "#00f"})
    off = flag(enabled=False, variants=[{"id": "blue", "weight": 1}])
    assert run(off, userId="u").variant is None


def test_result_shape() -> None:
    r = run(flag(rollout={"percentage": 0}), userId="u")
    doc = msgspec.json.decode(msgspec.json.encode(r))
    assert doc == {
        "flagKey": "f",
        "enabled": False,
        "variant": None,
        "configuration": None,
        "reason": "DEFAULT",
        "detail": "rollout_0",
        "flagVersion": 1,
    }


# -- properties the issue asks for --------------------------------------------------------

IDS = [f"user-{random.Random(7).getrandbits(64):x}-{i}" for i in range(100_000)]


def enabled_ids(percentage: float, ids: list[str]) -> set[str]:
    f = flag("rollout_flag", rollout={"percentage": percentage})
    empty: dict[str, CompiledFlag] = {}
    return {i for i in ids if evaluate(f, EvaluationContext(user_id=i), NOW, empty.get).enabled}


def test_25_percent_rollout_enables_25_percent_of_100k_ids() -> None:
    share = len(enabled_ids(25, IDS)) / len(IDS)
    assert 0.24 <= share <= 0.26


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=200, unique=True),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_raising_the_percentage_only_adds_users(ids: list[str], a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert enabled_ids(low, ids) <= enabled_ids(high, ids)


def test_raising_25_to_50_keeps_everyone_in() -> None:
    quarter, half = enabled_ids(25, IDS), enabled_ids(50, IDS)
    assert quarter <= half and 0.49 <= len(half) / len(IDS) <= 0.51


def test_50_50_variants_split_within_one_percent() -> None:
    f = flag("ab", variants=[{"id": "a", "weight": 50}, {"id": "b", "weight": 50}])
    counts = Counter(run(f, userId=i).variant for i in IDS)
    assert abs(counts["a"] / len(IDS) - 0.5) <= 0.01


def test_weighted_variants_follow_their_weights() -> None:
    f = flag(
        "abc",
        variants=[{"id": "a", "weight": 10}, {"id": "b", "weight": 30}, {"id": "c", "weight": 60}],
    )
    counts = Counter(run(f, userId=i).variant for i in IDS)
    for variant, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(counts[variant] / len(IDS) - share) <= 0.01


def test_variant_choice_is_independent_of_the_rollout_bucket() -> None:
    variants = [{"id": "a", "weight": 50}, {"id": "b", "weight": 50}]
    narrow = flag("indep", rollout={"percentage": 20}, variants=variants)
    wide = flag("indep", rollout={"percentage": 100}, variants=variants)
    enabled = [i for i in IDS if run(narrow, userId=i).enabled]
    # The same user gets the same variant whatever the percentage...
    assert all(run(narrow, userId=i).variant == run(wide, userId=i).variant for i in enabled)
    # ...and the users inside a 20% rollout still split 50/50 (no correlation with buckets).
    counts = Counter(run(narrow, userId=i).variant for i in enabled)
    assert abs(counts["a"] / len(enabled) - 0.5) <= 0.02


def test_sub_percent_rollouts_are_exact() -> None:
    f = flag("tiny", rollout={"percentage": 0.5})
    share = sum(run(f, userId=i).enabled for i in IDS) / len(IDS)
    assert 0.004 <= share <= 0.006


# -- validation -------------------------------------------------------------------------


def definition(**fields: Any) -> FlagDefinition:
    return msgspec.convert({"name": "x", **fields}, FlagDefinition)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        (
            {"rules": [{"attribute": "a", "operator": "gt", "values": ["ten"]}]},
            "$.rules[0].values[0]",
        ),
        (
            {"rules": [{"attribute": "a", "operator": "semver_gt", "values": ["1.x"]}]},
            "$.rules[0].values[0]",
        ),
        ({"rules": [{"attribute": "a", "operator": "in", "values": []}]}, "$.rules[0].values"),
        ({"variants": [{"id": "a", "weight": 0}, {"id": "b", "weight": 0}]}, "$.variants"),
        ({"variants": [{"id": "a"}, {"id": "a"}]}, "$.variants[1].id"),
        ({"rollout": {"startDate": "2026-02-01", "endDate": "2026-01-01"}}, "$.rollout.endDate"),
        ({"rollout": {"startDate": "soon"}}, "$.rollout.startDate"),
        ({"dependencies": ["missing"]}, "$.dependencies[0]"),
        ({"dependencies": ["x"]}, "$.dependencies[0]"),
        (
            {"environments": {"prod": {"rollout": {"endDate": "never"}}}},
            "$.environments.prod.rollout.endDate",
        ),
    ],
)
def test_validation_names_the_path(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(Invalid) as raised:
        validate_definition(definition(**fields), "x", known=lambda k: None)
    assert path in [e.path for e in raised.value.errors]


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"rollout": {"percentage": 101}}, "$.rollout.percentage"),
        ({"rollout": {"percentage": -1}}, "$.rollout.percentage"),
        ({"variants": [{"id": "a", "weight": -5}]}, "$.variants[0].weight"),
        (
            {"rules": [{"attribute": "a", "operator": "like", "values": ["x"]}]},
            "$.rules[0].operator",
        ),
    ],
)
def test_type_rules_are_checked_at_decode(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(
        msgspec.ValidationError,
        match=where.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]"),
    ):
        definition(**fields)


def test_cycles_are_refused() -> None:
    existing = {
        "a": definition(dependencies=["b"]),
        "b": definition(dependencies=["c"]),
        "c": definition(),
    }
    with pytest.raises(Invalid) as raised:
        validate_definition(definition(dependencies=["a"]), "c", known=existing.get)
    assert "c -> a -> b -> c" in raised.value.errors[0].message
    validate_definition(definition(dependencies=["a"]), "d", known=existing.get)  # no cycle


def test_semver_ordering() -> None:
    versions = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
        "2.0.0",
    ]
    keys = [semver_key(v) for v in versions]
    assert keys == sorted(keys)  # type: ignore[type-var]


_NAMES = st.none() | st.sampled_from(["a", "b", "c"])


@settings(max_examples=300, deadline=None)
@given(
    percentage=st.sampled_from([0, 0.001, 30, 50, 99.999, 100]),
    groups=st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True),
    regions=st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True),
    rules=st.lists(
        st.fixed_dictionaries(
            {
                "attribute": st.sampled_from(["plan", "region", "userGroup", "n"]),
                "operator": st.sampled_from(["in", "not_in", "eq", "neq", "contains"]),
                "values": st.lists(st.sampled_from(["a", "b", 1, 2]), min_size=1, max_size=2),
            }
        ),
        max_size=2,
    ),
    weights=st.lists(st.integers(0, 5), max_size=3),
    override=st.booleans(),
    contexts=st.lists(
        st.fixed_dictionaries(
            {
                "userId": _NAMES,
                "agentId": _NAMES,
                "sessionId": _NAMES,
                "userGroup": _NAMES,
                "region": _NAMES,
                "environment": st.sampled_from([None, "production", "staging"]),
                "customAttributes": st.fixed_dictionaries(
                    {},
                    optional={"plan": _NAMES, "n": st.none() | st.integers(0, 3) | st.just("x")},
                ),
            }
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_the_specialized_path_gives_what_the_general_one_gives(
    percentage: float,
    groups: list[str],
    regions: list[str],
    rules: list[dict[str, Any]],
    weights: list[int],
    override: bool,
    contexts: list[dict[str, Any]],
) -> None:
    """Most flags are evaluated by a closure made at compile time (`_specialize`): for any
    flag it takes and any context, it must return the very result the general path does."""
    variants = [{"id": f"v{i}", "weight": w, "configuration": i} for i, w in enumerate(weights)]
    fields: dict[str, Any] = {
        "rollout": {"percentage": percentage, "userGroups": groups, "regions": regions},
        "rules": rules,
        "variants": variants,
    }
    if override:
        fields["environments"] = {"staging": {"rollout": {"percentage": 100 - percentage}}}
    try:
        definition = msgspec.convert({"name": "spec", "enabled": True, **fields}, FlagDefinition)
        validate_definition(definition, "spec", known=lambda key: None)
    except (Invalid, msgspec.ValidationError):  # values the operator does not take
        return
    f = compile_flag("spec", 1, definition)
    views = [f.base, *f.by_environment.values()]
    assert all(view.fast is not None for view in views)
    given = [msgspec.convert(c, EvaluationContext) for c in contexts]
    fast = [evaluate(f, c, NOW, {"spec": f}.get) for c in given]
    for view in views:
        view.fast = None  # the general path from here on
    general = [evaluate(f, c, NOW, {"spec": f}.get) for c in given]
    assert all(a is b for a, b in zip(fast, general, strict=True)), (fast, general)


def test_flags_with_dependencies_dates_or_individual_targets_take_the_general_path() -> None:
    assert flag("d", dependencies=["x"]).base.fast is None
    assert flag("s", rollout={"startDate": "2026-01-01T00:00:00Z"}).base.fast is None
    assert flag("t", rollout={"userIds": ["u"]}).base.fast is None
    assert flag("x", rollout={"excludeUserIds": ["u"]}).base.fast is None
    assert flag("off", enabled=False).base.fast is None
    assert flag("on").base.fast is not None
