"""The cross-language flag vectors: flag documents, contexts and the Python engine's answers.

`python -m tests.flag_vectors` writes tests/fixtures/flag_vectors.json. The Python suite
(tests/test_flag_vectors.py) checks the file still matches this engine; the Node client's
suite (clients/node/test/vectors.test.mjs) checks its engine gives the same answers. A
change to the evaluation rules shows up as a diff of that file, on both sides at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from fpcd.client.model import compile_document, to_context
from fpcd.domain.flags import FlagDefinition, evaluate, parse_instant

PATH = Path(__file__).parent / "fixtures" / "flag_vectors.json"
CASES = "cases (flag, index in contexts, expected result)"

#: The instant every case is evaluated at: 2026-05-28T20:26:40Z.
NOW = 1_780_000_000.0
#: The environment of a context that names none (a client's own environment).
DEFAULT_ENVIRONMENT = "default"

IDS = [f"user-{i}" for i in range(60)] + [
    "u-42", "émile", "ユーザー-1", "用户", "😀-emoji", "Ünïcödé", "", " ", "a:b", "x" * 64,
]  # fmt: skip


#: Flags (by key prefix) whose answer depends on the id's bucket: evaluated for every id.
_BUCKETED = ("pct_", "variants", "targeted", "groups_half", "dep_half", "by_environment")


def _flag(key: str, version: int = 1, **definition: Any) -> dict[str, Any]:
    definition.setdefault("name", key)
    parsed = msgspec.convert(definition, FlagDefinition)
    doc: dict[str, Any] = msgspec.to_builtins(parsed)
    doc.update(key=key, version=version, archived=False)
    return doc


def _rule(attribute: str, operator: str, *values: Any) -> dict[str, Any]:
    return {"attribute": attribute, "operator": operator, "values": list(values)}


def flags() -> list[dict[str, Any]]:
    variants3 = [
        {"id": "control", "weight": 50, "configuration": {"steps": 3}},
        {"id": "onepage", "weight": 30, "configuration": {"steps": 1}},
        {"id": "wizard", "weight": 20, "configuration": "w"},
    ]
    docs = [
        # rollout edges, including Python's round-half-even of percentage * 1000
        *(
            _flag(f"pct_{name}", enabled=True, rollout={"percentage": p})
            for name, p in [
                ("0", 0),
                ("0_0005", 0.0005),
                ("0_001", 0.001),
                ("0_0015", 0.0015),
                ("0_0025", 0.0025),
                ("1", 1),
                ("12_3455", 12.3455),
                ("37_5", 37.5),
                ("50", 50),
                ("99_999", 99.999),
                ("100", 100),
            ]
        ),
        _flag("disabled", enabled=False),
        _flag("variants", enabled=True, variants=variants3),
        _flag("variants_half", enabled=True, rollout={"percentage": 50}, variants=variants3),
        _flag(
            "variants_fractional",
            enabled=True,
            variants=[
                {"id": "a", "weight": 0.3333},
                {"id": "zero", "weight": 0},
                {"id": "b", "weight": 0.6667, "configuration": [1, 2]},
                {"id": "c", "weight": 0.0005},
            ],
        ),
        _flag("one_variant", enabled=True, variants=[{"id": "only", "configuration": None}]),
        # dates
        _flag("starts_later", enabled=True, rollout={"startDate": "2026-06-01"}),
        _flag("started", enabled=True, rollout={"startDate": "2026-05-28T20:26:40Z"}),
        _flag("ended", enabled=True, rollout={"endDate": "2026-05-28T20:26:40+00:00"}),
        _flag(
            "window_offset",
            enabled=True,
            rollout={"startDate": "2026-05-29T01:00:00+05:30", "endDate": "2026-05-29"},
        ),
        _flag("window_not_yet", enabled=True, rollout={"startDate": "2026-05-29T02:00:00+05:30"}),
        # dependencies
        _flag("dep_on", enabled=True, dependencies=["pct_100"]),
        _flag("dep_off", enabled=True, dependencies=["disabled"]),
        _flag("dep_half", enabled=True, dependencies=["pct_50"]),
        _flag(
            "dep_variant", enabled=True, dependencies=[{"flag": "variants", "variant": "control"}]
        ),
        _flag("dep_chain", enabled=True, dependencies=["dep_variant", "dep_on"]),
        # targeting
        _flag(
            "targeted",
            enabled=True,
            rollout={
                "percentage": 10,
                "userIds": ["vip", "émile"],
                "agentIds": ["agent-7"],
                "excludeUserIds": ["banned", "user-3"],
            },
            variants=variants3,
        ),
        _flag(
            "groups_regions",
            enabled=True,
            rollout={"percentage": 100, "userGroups": ["beta", "staff"], "regions": ["eu"]},
        ),
        _flag(
            "groups_half",
            enabled=True,
            rollout={"percentage": 50, "userGroups": ["beta"]},
            variants=variants3,
        ),
        # every operator, on context fields and custom attributes
        *(
            _flag(f"op_{i}_{rule['operator']}", enabled=True, rules=[rule])
            for i, rule in enumerate(
                [
                    _rule("userGroup", "eq", "beta"),
                    _rule("plan", "eq", 1),
                    _rule("flag", "eq", True),
                    _rule("obj", "eq", {"a": [1, 2]}),
                    _rule("region", "neq", "eu"),
                    _rule("plan", "neq", "free"),
                    _rule("region", "in", "eu", "us"),
                    _rule("tier", "in", 1, 2, "gold"),
                    _rule("tier", "in", [1], {"a": 1}),
                    _rule("region", "not_in", "cn"),
                    _rule("tier", "not_in", 1, 2),
                    _rule("email", "contains", "@example.", "+test"),
                    _rule("userId", "starts_with", "user-1", "émi"),
                    _rule("email", "ends_with", ".org"),
                    _rule("age", "gt", 18),
                    _rule("age", "gte", "18"),
                    _rule("score", "lt", 0.5),
                    _rule("score", "lte", "1e-1"),
                    _rule("version", "semver_eq", "1.2.3"),
                    _rule("version", "semver_gt", "1.2.3-rc.1"),
                    _rule("version", "semver_lt", "v2.0.0"),
                    _rule("signup", "before", "2026-01-01T00:00:00Z"),
                    _rule("signup", "after", "2025-06-01"),
                    _rule("environment", "eq", "staging"),
                ]
            )
        ),
        _flag(
            "rules_and_groups",
            enabled=True,
            rollout={"percentage": 50, "userGroups": ["beta"]},
            rules=[_rule("plan", "in", "pro", "team"), _rule("age", "gte", 21)],
        ),
        # environment overrides
        _flag(
            "by_environment",
            enabled=True,
            rollout={"percentage": 100, "startDate": "2026-01-01"},
            variants=variants3,
            environments={
                "production": {"enabled": False},
                "staging": {"rollout": {"percentage": 50, "startDate": None}},
                "canary": {
                    "rollout": {"endDate": "2026-05-01"},
                    "variants": [{"id": "canary", "configuration": {"c": True}}],
                },
                "dev": {"enabled": True, "variants": []},
            },
        ),
        _flag("off_but_dev", enabled=False, environments={"dev": {"enabled": True}}),
        {**_flag("archived_flag", enabled=True), "archived": True},
        _flag("version_7", enabled=True, version=7),
    ]
    return docs


def contexts() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    out += [{"userId": i} for i in IDS]
    out += [
        {"agentId": "agent-7"},
        {"agentId": "agent-1"},
        {"sessionId": "s-1"},
        {"sessionId": ""},
        {"userId": "", "agentId": "agent-2"},
        {"userId": "vip"},
        {"userId": "banned"},
        {"userId": "user-3", "agentId": "agent-7"},
        {"userId": "u-42", "userGroup": "beta", "region": "eu"},
        {"userId": "u-42", "userGroup": "staff", "region": "us"},
        {"userId": "u-43", "userGroup": "beta"},
        {"userId": "u-44", "userGroup": "beta", "region": "eu", "environment": "production"},
        {"userId": "u-45", "environment": "staging"},
        {"userId": "u-46", "environment": "canary"},
        {"userId": "u-47", "environment": "dev"},
        {"userId": "u-48", "environment": "unknown-env"},
        {"userId": "u-50", "region": "us", "customAttributes": {"plan": 1, "tier": 1}},
        {"userId": "u-51", "region": "cn", "customAttributes": {"plan": 1.0, "tier": "gold"}},
        {"userId": "u-52", "customAttributes": {"plan": True, "tier": 3, "flag": 1}},
        {"userId": "u-53", "customAttributes": {"flag": True, "obj": {"a": [1, 2]}}},
        {"userId": "u-54", "customAttributes": {"obj": {"a": [1, 2.0]}, "tier": [1]}},
        {"userId": "u-55", "customAttributes": {"tier": {"a": 1}, "plan": None}},
        {"userId": "u-56", "customAttributes": {"email": "me@example.com", "age": 19}},
        {"userId": "u-57", "customAttributes": {"email": "me+test@corp.org", "age": "18"}},
        {"userId": "u-58", "customAttributes": {"email": 5, "age": "eighteen"}},
        {"userId": "u-59", "customAttributes": {"age": True, "score": 0.1}},
        {"userId": "u-60", "customAttributes": {"score": "0.49", "version": "1.2.3"}},
        {"userId": "u-61", "customAttributes": {"score": " 1_0 ", "version": "v1.2.3"}},
        {"userId": "u-62", "customAttributes": {"score": "inf", "version": "1.2.3-rc.2"}},
        {"userId": "u-63", "customAttributes": {"score": "-inf", "version": "1.2.3-rc.1"}},
        {"userId": "u-64", "customAttributes": {"score": "nan", "version": "1.2.3-beta"}},
        {"userId": "u-65", "customAttributes": {"version": "1.10.0", "signup": "2025-12-31"}},
        {"userId": "u-66", "customAttributes": {"version": "2.0.0-alpha", "signup": "2026-01-01"}},
        {
            "userId": "u-67",
            "customAttributes": {"version": "1.2", "signup": "2025-06-01T00:00:01Z"},
        },
        {"userId": "u-68", "customAttributes": {"signup": "2025-05-31T23:00:00-02:00"}},
        {"userId": "u-69", "customAttributes": {"signup": "not a date", "version": 123}},
        {
            "userId": "u-70",
            "userGroup": "beta",
            "customAttributes": {"plan": "pro", "age": 30},
        },
        {
            "userId": "user-12",
            "userGroup": "beta",
            "customAttributes": {"plan": "team", "age": "21"},
        },
        {"userId": "user-1", "environment": "staging"},
    ]
    return out


INSTANTS = [
    "2026-01-01", "20260101", "2026-01-01T10", "2026-01-01T10:30", "2026-01-01T1030",
    "2026-01-01T10:30:15.5", "2026-01-01T10:30:15.1234567", "2026-01-01T10:30:15,25Z",
    "2026-01-01 10:30:15+05:30", "2026-01-01T10:30:15-0800", "2026-01-01T10:30:15+05",
    "2026-W01-1", "2026W012", "2026-001", "2026-02-30", "2024-02-29", "2023-02-29",
    " 2026-01-01T00:00:00Z ", "2026-01-01T24:00:00", "2026-01-01X10:30", "20260101T103015Z",
    "2026-01-01T10:30:15.1234567+01:00", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "not a date", "", "2026-13-01", "2026-1-1",
]  # fmt: skip


def build() -> dict[str, Any]:
    docs = flags()
    compiled = {}
    for doc in docs:
        flag = compile_document(doc)
        if flag is not None:
            compiled[doc["key"]] = flag
    every_context = contexts()
    by_id = range(1, 1 + len(IDS))
    cases = []
    for doc in [*docs, {"key": "no_such_flag"}]:
        key = doc["key"]
        for index, context in enumerate(every_context):
            if index in by_id and not key.startswith(_BUCKETED):
                continue  # only flags that bucket need every id
            ctx = to_context(context, DEFAULT_ENVIRONMENT)
            result = evaluate(compiled.get(key, key), ctx, NOW, compiled.get)
            cases.append([key, index, msgspec.to_builtins(result)])
    return {
        "comment": "Generated by `python -m tests.flag_vectors` from fpcd's engine: do not edit.",
        "now": NOW,
        "defaultEnvironment": DEFAULT_ENVIRONMENT,
        "flags": docs,
        "contexts": every_context,
        CASES: cases,
        "instants": [{"text": text, "expected": parse_instant(text)} for text in INSTANTS],
    }


def render() -> str:
    doc = build()
    lines = [
        f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
        for k, v in doc.items()
        if k != CASES
    ]
    cases = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in doc[CASES])
    return "{" + ",\n".join(lines) + f",\n{json.dumps(CASES)}:[\n{cases}\n]}}\n"


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}")
