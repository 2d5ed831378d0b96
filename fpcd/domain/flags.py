"""Feature flags: definition, validation, compilation and evaluation (pure, no I/O).

`compile_flag` is the only way to get what `evaluate` reads: sets, thresholds,
parsed dates, semvers and numbers are prepared once per flag version, so an
evaluation does no parsing. The bucketing formula is fixed by the design brief
and shared by every SDK: never change it without a versioned, opt-in switch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final, Literal

import mmh3
import msgspec

from fpcd.domain.errors import FieldError, Invalid
from fpcd.domain.instants import RANGE, in_range, iso_utc, parse_iso, to_utc
from fpcd.domain.names import valid_flag_key, valid_name

Percentage = Annotated[float, msgspec.Meta(ge=0, le=100)]
Weight = Annotated[float, msgspec.Meta(ge=0)]

BUCKETS = 100_000
#: What a rule compares with: anything else is refused where the definition is decoded.
Operator = Literal[
    "eq", "neq", "in", "not_in", "contains", "starts_with", "ends_with",
    "gt", "gte", "lt", "lte", "semver_eq", "semver_gt", "semver_lt", "before", "after",
]  # fmt: skip
#: Context fields a rule may name, by wire name -> EvaluationContext attribute; any other
#: attribute is looked up in `customAttributes`.
CONTEXT_FIELDS = {
    "userId": "user_id",
    "agentId": "agent_id",
    "sessionId": "session_id",
    "userGroup": "user_group",
    "region": "region",
    "environment": "environment",
}

#: OpenFeature resolution reasons.
Reason = Literal["STATIC", "DEFAULT", "TARGETING_MATCH", "SPLIT", "DISABLED", "ERROR"]
STATIC: Final = "STATIC"
DEFAULT: Final = "DEFAULT"
TARGETING_MATCH: Final = "TARGETING_MATCH"
SPLIT: Final = "SPLIT"
DISABLED: Final = "DISABLED"
ERROR: Final = "ERROR"


class Spec(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Definition parts: camelCase on the wire, unknown fields refused."""


class Rollout(Spec, kw_only=True):
    percentage: Percentage = 100.0
    user_groups: list[str] = []
    regions: list[str] = []
    #: ISO 8601 date or date-time (UTC when no offset is given).
    start_date: str | None = None
    end_date: str | None = None
    #: Forced on for these ids (user ids and agent ids).
    user_ids: list[str] = []
    agent_ids: list[str] = []
    #: Forced off for these user ids (wins over everything below `enabled`).
    exclude_user_ids: list[str] = []


class RolloutOverride(Spec, kw_only=True, omit_defaults=True):
    """Per-environment rollout: only the fields given replace the base rollout's."""

    percentage: Percentage | msgspec.UnsetType = msgspec.UNSET
    user_groups: list[str] | msgspec.UnsetType = msgspec.UNSET
    regions: list[str] | msgspec.UnsetType = msgspec.UNSET
    start_date: str | msgspec.UnsetType | None = msgspec.UNSET
    end_date: str | msgspec.UnsetType | None = msgspec.UNSET
    user_ids: list[str] | msgspec.UnsetType = msgspec.UNSET
    agent_ids: list[str] | msgspec.UnsetType = msgspec.UNSET
    exclude_user_ids: list[str] | msgspec.UnsetType = msgspec.UNSET


class Variant(Spec, kw_only=True):
    id: str
    name: str = ""
    weight: Weight = 1.0
    configuration: Any = None


class Rule(Spec, kw_only=True):
    """`attribute` names a context field or a key of `customAttributes`."""

    attribute: str
    operator: Operator
    values: list[Any]


class Dependency(Spec, kw_only=True):
    """The other flag must be on (and, if `variant` is given, serve that variant)."""

    flag: str
    variant: str | None = None


class EnvironmentOverride(Spec, kw_only=True, omit_defaults=True):
    enabled: bool | None = None
    rollout: RolloutOverride | None = None
    variants: list[Variant] | None = None


class FlagDefinition(Spec, kw_only=True):
    """The seed's POST body plus the design brief's extensions."""

    key: str | None = None
    name: str
    description: str = ""
    enabled: bool = False
    rollout: Rollout = msgspec.field(default_factory=Rollout)
    variants: list[Variant] = []
    dependencies: list[str | Dependency] = []
    tags: list[str] = []
    rules: list[Rule] = []
    environments: dict[str, EnvironmentOverride] = {}


class EvaluationContext(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Who a flag is evaluated for; unknown fields are ignored so SDKs can send more."""

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    user_group: str | None = None
    region: str | None = None
    environment: str | None = None
    custom_attributes: dict[str, Any] = {}


class EvaluationResult(
    msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True, frozen=True
):
    """Frozen: a compiled flag hands out the same result object for the same outcome."""

    flag_key: str
    enabled: bool
    variant: str | None
    configuration: Any
    reason: Reason
    detail: str | None = None
    error_code: str | None = None
    flag_version: int = 0


def derive_key(name: str) -> str:
    """ "New Checkout Flow" -> "new_checkout_flow" (lowercase, non-alphanumeric runs -> _)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


_hash = mmh3.hash


def bucket(flag_key: str, stickiness_id: str) -> int:
    """The rollout bucket, 0..99,999: `murmur3_x86_32(utf8(key:id), 0) % 100000`."""
    return int(mmh3.hash(f"{flag_key}:{stickiness_id}", 0, signed=False)) % BUCKETS


def variant_slot(flag_key: str, stickiness_id: str, total: int) -> int:
    """Variant choice, independent of the rollout bucket: a different hash input."""
    return int(mmh3.hash(f"{flag_key}:variant:{stickiness_id}", 0, signed=False)) % total


# -- parsing helpers (used by validation and compilation) -----------------------------

_SEMVER = re.compile(
    r"v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)


def semver_key(value: str) -> tuple[Any, ...] | None:
    """A sortable key for a semantic version (pre-releases sort before the release)."""
    match = _SEMVER.fullmatch(value.strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    try:
        if pre is None:
            pre_key: tuple[Any, ...] = ((1,),)
        else:
            pre_key = tuple(
                (0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p)
                for p in pre.split(".")
            )
            pre_key = ((0,), *pre_key)
        return (int(major), int(minor), int(patch), pre_key)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return None


def parse_instant(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 date or date-time (naive means UTC); None if not one.

    Unbounded (a stored date from before the range checks still evaluates); writes are
    checked against `fpcd.domain.instants` by `validate_definition`.
    """
    moment = parse_iso(value)
    return moment.timestamp() if moment is not None else None


def _instant_problem(value: Any, what: str) -> str | None:
    """Why `value` is not a usable instant for `what`, or None if it is one."""
    instant = parse_instant(value)
    if instant is None:
        return f"{what} an ISO 8601 date or time"
    if not in_range(instant):
        return f"out of range: must be {RANGE}"
    return None


def _normalized(value: Any) -> Any:
    """An in-range ISO 8601 string in its UTC form; anything else unchanged (and refused by
    validation)."""
    moment = parse_iso(value)
    if moment is None:
        return value
    utc = to_utc(moment)
    return iso_utc(utc) if utc is not None else value


def normalize_dates(definition: FlagDefinition) -> FlagDefinition:
    """Every date of a definition (start and end dates, before/after rule values) in UTC."""

    def rollout_dates(rollout: Any) -> Any:
        changes = {
            field: _normalized(getattr(rollout, field))
            for field in ("start_date", "end_date")
            if isinstance(getattr(rollout, field), str)
        }
        return msgspec.structs.replace(rollout, **changes) if changes else rollout

    rules = [
        msgspec.structs.replace(rule, values=[_normalized(v) for v in rule.values])
        if rule.operator in ("before", "after")
        else rule
        for rule in definition.rules
    ]
    environments = {
        env: msgspec.structs.replace(override, rollout=rollout_dates(override.rollout))
        if override.rollout is not None
        else override
        for env, override in definition.environments.items()
    }
    return msgspec.structs.replace(
        definition,
        rollout=rollout_dates(definition.rollout),
        rules=rules,
        environments=environments,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond a float (10**400): as far as one goes
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# -- validation ----------------------------------------------------------------------


def _check_rollout(
    rollout: Rollout | RolloutOverride, path: str, errors: list[FieldError]
) -> tuple[float | None, float | None]:
    start = end = None
    for name, field in (("startDate", "start_date"), ("endDate", "end_date")):
        raw = getattr(rollout, field)
        if isinstance(raw, str):
            instant = parse_instant(raw)
            problem = _instant_problem(raw, "expected")
            if problem is not None:
                errors.append(FieldError(f"{path}.{name}", problem))
            elif field == "start_date":
                start = instant
            else:
                end = instant
    if start is not None and end is not None and end <= start:
        errors.append(FieldError(f"{path}.endDate", "endDate must be after startDate"))
    return start, end


def _check_variants(variants: list[Variant], path: str, errors: list[FieldError]) -> None:
    seen: set[str] = set()
    for i, variant in enumerate(variants):
        if not variant.id:
            errors.append(FieldError(f"{path}[{i}].id", "a variant needs an id"))
        if variant.id in seen:
            errors.append(FieldError(f"{path}[{i}].id", f"duplicate variant id {variant.id!r}"))
        seen.add(variant.id)
    if variants and sum(v.weight for v in variants) <= 0:
        errors.append(FieldError(path, "at least one variant needs a weight above 0"))


def _check_rule(rule: Rule, path: str, errors: list[FieldError]) -> None:
    # The operator is an Operator: its type refused any other where it was decoded.
    if not rule.attribute:
        errors.append(FieldError(f"{path}.attribute", "an attribute is required"))
    if not rule.values:
        errors.append(FieldError(f"{path}.values", "at least one value is required"))
        return
    op = rule.operator
    for j, value in enumerate(rule.values):
        where = f"{path}.values[{j}]"
        if op in ("gt", "gte", "lt", "lte") and _number(value) is None:
            errors.append(FieldError(where, f"{op} compares numbers"))
        elif op.startswith("semver_") and (not isinstance(value, str) or not semver_key(value)):
            errors.append(FieldError(where, f"{op} needs a semantic version like 1.2.3"))
        elif op in ("before", "after") and (problem := _instant_problem(value, f"{op} needs")):
            errors.append(FieldError(where, problem))
        elif op in ("contains", "starts_with", "ends_with") and not isinstance(value, str):
            errors.append(FieldError(where, f"{op} compares strings"))


def dependency_keys(definition: FlagDefinition) -> list[tuple[str, str | None]]:
    return [
        (dep, None) if isinstance(dep, str) else (dep.flag, dep.variant)
        for dep in definition.dependencies
    ]


def validate_definition(
    definition: FlagDefinition,
    key: str,
    *,
    known: Callable[[str], FlagDefinition | None],
) -> None:
    """Every rule a stored flag must follow; raises Invalid listing each failing path.

    `known` finds other (current, unarchived) flags for the dependency checks.
    """
    errors: list[FieldError] = []
    if not valid_flag_key(key):
        errors.append(FieldError("$.key", "keys are 1-128 of a-z, 0-9, '_', '.', '-'"))
    if not definition.name.strip():
        errors.append(FieldError("$.name", "a name is required"))
    _check_rollout(definition.rollout, "$.rollout", errors)
    _check_variants(definition.variants, "$.variants", errors)
    for i, rule in enumerate(definition.rules):
        _check_rule(rule, f"$.rules[{i}]", errors)
    for env, override in definition.environments.items():
        where = f"$.environments.{env}"
        if not valid_name(env):
            errors.append(FieldError(where, "not a valid environment name"))
        if override.rollout is not None:
            _check_rollout(override.rollout, f"{where}.rollout", errors)
        if override.variants is not None:
            _check_variants(override.variants, f"{where}.variants", errors)
    for i, (dep, variant) in enumerate(dependency_keys(definition)):
        where = f"$.dependencies[{i}]"
        if dep == key:
            errors.append(FieldError(where, "a flag cannot depend on itself"))
            continue
        other = known(dep)
        if other is None:
            errors.append(FieldError(where, f"unknown flag {dep!r}"))
        elif variant is not None and variant not in {v.id for v in _all_variants(other)}:
            errors.append(FieldError(where, f"flag {dep!r} has no variant {variant!r}"))
    if not errors:
        cycle = find_cycle(key, definition, known)
        if cycle:
            errors.append(FieldError("$.dependencies", "dependency cycle: " + " -> ".join(cycle)))
    if errors:
        raise Invalid(f"flag {key!r} is not valid", errors=errors)


def check_dependents(
    key: str, definition: FlagDefinition, others: Iterable[tuple[str, FlagDefinition]]
) -> None:
    """Refuse a new definition of `key` that drops a variant other flags depend on: those
    flags would be switched off silently (the dependency can never be met)."""
    variants = {v.id for v in _all_variants(definition)}
    errors = [
        FieldError(
            "$.variants",
            f"variant {variant!r} is required by flag {other!r} (its dependencies[{i}])",
        )
        for other, other_definition in others
        if other != key
        for i, (dep, variant) in enumerate(dependency_keys(other_definition))
        if dep == key and variant is not None and variant not in variants
    ]
    if errors:
        raise Invalid(
            f"flag {key!r} is not valid: other flags depend on variants it removes", errors=errors
        )


def _all_variants(definition: FlagDefinition) -> Iterable[Variant]:
    yield from definition.variants
    for override in definition.environments.values():
        yield from override.variants or []


def find_cycle(
    key: str, definition: FlagDefinition, known: Callable[[str], FlagDefinition | None]
) -> list[str]:
    """The first dependency path that leads back to `key`, if the new definition makes one."""
    stack: list[tuple[str, list[str]]] = [
        (dep, [key, dep]) for dep, _ in dependency_keys(definition)
    ]
    seen: set[str] = set()
    while stack:
        current, path = stack.pop()
        if current == key:
            return path
        if current in seen:
            continue
        seen.add(current)
        other = known(current)
        if other is not None:
            stack.extend((dep, [*path, dep]) for dep, _ in dependency_keys(other))
    return []


# -- compilation -------------------------------------------------------------------------

Matcher = Callable[[Any], bool]


def _compile_rule(rule: Rule) -> tuple[str, bool, Matcher]:
    """(attribute, is_context_field, matcher); a missing attribute never matches."""
    op, values = rule.operator, rule.values
    first = values[0]
    matcher: Matcher
    if op == "eq":
        matcher = lambda v: v == first  # noqa: E731
    elif op == "neq":
        matcher = lambda v: v != first  # noqa: E731
    elif op in ("in", "not_in"):
        try:
            members: Any = frozenset(values)
        except TypeError:  # unhashable values (objects, lists): compare one by one
            members = list(values)
        if op == "in":

            def matcher(v: Any) -> bool:  # _member, inline: one call per rule, not two
                try:
                    return v in members
                except TypeError:
                    return False
        else:

            def matcher(v: Any) -> bool:
                try:
                    return v not in members
                except TypeError:
                    return True
    elif op == "contains":
        needles = tuple(values)
        matcher = lambda v: isinstance(v, str) and any(n in v for n in needles)  # noqa: E731
    elif op == "starts_with":
        prefixes = tuple(values)
        matcher = lambda v: isinstance(v, str) and v.startswith(prefixes)  # noqa: E731
    elif op == "ends_with":
        suffixes = tuple(values)
        matcher = lambda v: isinstance(v, str) and v.endswith(suffixes)  # noqa: E731
    elif op in ("gt", "gte", "lt", "lte"):
        bound = _number(first)
        assert bound is not None
        compare = {
            "gt": bound.__lt__, "gte": bound.__le__, "lt": bound.__gt__, "lte": bound.__ge__
        }[op]  # fmt: skip

        def matcher(v: Any) -> bool:
            n = _number(v)
            return n is not None and compare(n)
    elif op.startswith("semver_"):
        target = semver_key(first)

        def matcher(v: Any) -> bool:
            key = semver_key(v) if isinstance(v, str) else None
            if key is None or target is None:
                return False
            return (
                key == target
                if op == "semver_eq"
                else (key > target if op == "semver_gt" else key < target)
            )
    else:  # before / after
        instant = parse_instant(first)
        assert instant is not None

        def matcher(v: Any) -> bool:
            t = parse_instant(v)
            return t is not None and (t < instant if op == "before" else t > instant)

    return rule.attribute, rule.attribute in CONTEXT_FIELDS, matcher


class CompiledVariant:
    __slots__ = ("configuration", "cumulative", "id")

    def __init__(self, id: str, configuration: Any, cumulative: int) -> None:
        self.id = id
        self.configuration = configuration
        self.cumulative = cumulative


class CompiledRules:
    """One environment's view of a flag, ready to evaluate."""

    __slots__ = (
        "agent_ids", "dependencies", "enabled", "end", "exclude", "fast", "groups", "individual",
        "percentage",
        "regions", "rules", "scheduled", "start", "targeted", "threshold", "total_weight",
        "user_ids", "variants",
    )  # fmt: skip

    def __init__(
        self,
        enabled: bool,
        rollout: Rollout,
        variants: list[Variant],
        rules: list[Rule],
        dependencies: list[tuple[str, str | None]],
    ) -> None:
        self.enabled = enabled
        self.dependencies = tuple(dependencies)
        self.start = parse_instant(rollout.start_date) if rollout.start_date else None
        self.end = parse_instant(rollout.end_date) if rollout.end_date else None
        self.scheduled = self.start is not None or self.end is not None
        self.exclude = frozenset(rollout.exclude_user_ids)
        self.user_ids = frozenset(rollout.user_ids)
        self.agent_ids = frozenset(rollout.agent_ids)
        self.individual = bool(self.exclude or self.user_ids or self.agent_ids)
        self.groups = frozenset(rollout.user_groups) or None
        self.regions = frozenset(rollout.regions) or None
        self.rules = tuple(_compile_rule(r) for r in rules)
        self.targeted = bool(self.groups or self.regions or self.rules)
        self.percentage = rollout.percentage
        self.threshold = round(rollout.percentage * 1000)
        weights = [round(v.weight * 1000) for v in variants]
        total = 0
        compiled: list[CompiledVariant] = []
        for variant, weight in zip(variants, weights, strict=True):
            if weight <= 0:
                continue
            total += weight
            compiled.append(CompiledVariant(variant.id, variant.configuration, total))
        self.variants = tuple(compiled)
        self.total_weight = total
        #: `evaluate`'s steps 5-8 with what they read bound once (`_specialize`), for a
        #: view with no dependencies, dates or individual targeting; set by CompiledFlag.
        self.fast: Callable[[EvaluationContext], EvaluationResult] | None = None


class CompiledFlag:
    """A flag version compiled for evaluation, with a view per environment override."""

    __slots__ = (
        "archived", "base", "bucket_prefix", "by_environment", "definition", "disabled", "key",
        "no_stickiness", "not_in_rollout", "not_targeted", "results", "rollout_0",
        "variant_prefix", "version",
    )  # fmt: skip

    def __init__(self, key: str, version: int, definition: FlagDefinition, archived: bool):
        #: The results this flag has given, by outcome: an evaluation builds no new object,
        #: and a door may keep a result's encoding (the flag socket does). Bounded by the
        #: definition: an outcome is a variant or none, a reason, and a detail that is a
        #: fixed word or names one of the flag's dependencies.
        self.results: dict[tuple[Any, ...], EvaluationResult] = {}
        self.key = key
        #: The hash inputs' fixed parts: `bucket()` and `variant_slot()` hash these + an id.
        self.bucket_prefix = f"{key}:"
        self.variant_prefix = f"{key}:variant:"
        self.version = version
        # The outcomes most evaluations end in, made once (and remembered in `results`).
        self.disabled = _result(self, False, DISABLED)
        self.not_targeted = _result(self, False, DEFAULT, "not_targeted")
        self.rollout_0 = _result(self, False, DEFAULT, "rollout_0")
        self.no_stickiness = _result(self, False, DEFAULT, "no_stickiness_id")
        self.not_in_rollout = _result(self, False, SPLIT, "not_in_rollout")
        self.definition = definition
        self.archived = archived
        deps = dependency_keys(definition)
        self.base = CompiledRules(
            definition.enabled, definition.rollout, definition.variants, definition.rules, deps
        )
        self.by_environment: dict[str, CompiledRules] = {}
        for env, override in definition.environments.items():
            rollout = definition.rollout
            if override.rollout is not None:
                given = {
                    f: getattr(override.rollout, f)
                    for f in override.rollout.__struct_fields__
                    if getattr(override.rollout, f) is not msgspec.UNSET
                }
                rollout = msgspec.structs.replace(rollout, **given)
            self.by_environment[env] = CompiledRules(
                definition.enabled if override.enabled is None else override.enabled,
                rollout,
                definition.variants if override.variants is None else override.variants,
                definition.rules,
                deps,
            )

        for view in (self.base, *self.by_environment.values()):
            view.fast = _specialize(self, view)

    def rules_for(self, environment: str | None) -> CompiledRules:
        if environment is None:
            return self.base
        return self.by_environment.get(environment, self.base)


def compile_flag(
    key: str, version: int, definition: FlagDefinition, archived: bool = False
) -> CompiledFlag:
    """The only way to build what `evaluate` reads."""
    return CompiledFlag(key, version, definition, archived)


Lookup = Callable[[str], "CompiledFlag | None"]


def _not_found(key: str) -> EvaluationResult:
    return EvaluationResult(
        flag_key=key,
        enabled=False,
        variant=None,
        configuration=None,
        reason=ERROR,
        error_code="FLAG_NOT_FOUND",
    )


def _result(
    flag: CompiledFlag, enabled: bool, reason: Reason, detail: str | None = None
) -> EvaluationResult:
    outcome = (enabled, reason, detail)
    result = flag.results.get(outcome)
    if result is None:
        result = EvaluationResult(
            flag_key=flag.key,
            enabled=enabled,
            variant=None,
            configuration=None,
            reason=reason,
            detail=detail,
            flag_version=flag.version,
        )
        flag.results[outcome] = result
    return result


def evaluate(
    flag: CompiledFlag | str,
    context: EvaluationContext,
    now: float,
    lookup: Lookup,
    _depth: int = 0,
) -> EvaluationResult:
    """Evaluate one flag for `context` at `now` (epoch seconds), in the brief's order.

    `flag` is a compiled flag, or a key to find with `lookup` (unknown -> FLAG_NOT_FOUND);
    `lookup` also resolves dependencies, which are evaluated for the same context.
    """
    if isinstance(flag, str):
        found = lookup(flag)
        if found is None or found.archived:
            return _not_found(flag)
        flag = found
    environment = context.environment
    rules = flag.base if environment is None else flag.by_environment.get(environment, flag.base)
    fast = rules.fast
    if fast is not None:  # on, no dependencies, dates or individual targeting: steps 5-8
        return fast(context)
    # 2. disabled
    if not rules.enabled:
        return flag.disabled
    # 3. dependencies
    for dep_key, dep_variant in rules.dependencies:
        if _depth > 16:
            return _result(flag, False, DISABLED, f"dependency:{dep_key}")
        dep = evaluate(dep_key, context, now, lookup, _depth + 1)
        if not dep.enabled or (dep_variant is not None and dep.variant != dep_variant):
            return _result(flag, False, DISABLED, f"dependency:{dep_key}")
    # 4. schedule
    if rules.scheduled:
        if rules.start is not None and now < rules.start:
            return _result(flag, False, DISABLED, "scheduled")
        if rules.end is not None and now >= rules.end:
            return _result(flag, False, DISABLED, "ended")
    user_id = context.user_id
    stickiness = user_id or context.agent_id or context.session_id
    # 5. individual targeting
    if rules.individual:
        if user_id is not None and user_id in rules.exclude:
            return _result(flag, False, TARGETING_MATCH, "excluded")
        if (user_id is not None and user_id in rules.user_ids) or (
            context.agent_id is not None and context.agent_id in rules.agent_ids
        ):
            return _with_variant(flag, rules, TARGETING_MATCH, stickiness, "targeted")
    # 6. groups, regions, rules
    if rules.targeted:
        if rules.groups is not None and context.user_group not in rules.groups:
            return flag.not_targeted
        if rules.regions is not None and context.region not in rules.regions:
            return flag.not_targeted
        for attribute, in_context, matcher in rules.rules:
            if in_context:
                value = getattr(context, CONTEXT_FIELDS[attribute])
            else:
                value = context.custom_attributes.get(attribute, _MISSING)
            if value is None or value is _MISSING or not matcher(value):
                return flag.not_targeted
    # 7. percentage rollout
    threshold = rules.threshold
    reason: Reason
    if threshold >= BUCKETS:
        reason = TARGETING_MATCH if rules.targeted else STATIC
    elif threshold <= 0:
        return flag.rollout_0
    elif stickiness is None:
        return flag.no_stickiness
    elif _hash(flag.bucket_prefix + stickiness, 0, False) % BUCKETS < threshold:  # bucket()
        reason = SPLIT
    else:
        return flag.not_in_rollout
    return _with_variant(flag, rules, reason, stickiness, None)


_MISSING = object()


def active(
    flag: CompiledFlag | None, environment: str | None, now: float, lookup: Lookup, _depth: int = 0
) -> bool:
    """Steps 2-4 for everyone: enabled in `environment`, dependencies active, in its dates.

    What a FEATURE_FLAG_UPDATE reports; per-user targeting and rollout still apply.
    """
    if flag is None or flag.archived or _depth > 16:
        return False
    rules = flag.rules_for(environment)
    if not rules.enabled:
        return False
    if rules.start is not None and now < rules.start:
        return False
    if rules.end is not None and now >= rules.end:
        return False
    return all(
        active(lookup(dep), environment, now, lookup, _depth + 1) for dep, _ in rules.dependencies
    )


def _specialize(
    flag: CompiledFlag, rules: CompiledRules
) -> Callable[[EvaluationContext], EvaluationResult] | None:
    """`evaluate` for a view that is on and has no dependencies, dates or individual
    targeting (most flags): steps 6-8 as `evaluate` takes them, with everything they read
    bound once, and step 8's possible results (what `_with_variant` returns for each
    variant) found in advance (`tests/test_flag_eval.py` checks both paths return the very
    same result objects)."""
    if not rules.enabled or rules.dependencies or rules.scheduled or rules.individual:
        return None
    targeted, groups, regions, checks = rules.targeted, rules.groups, rules.regions, rules.rules
    threshold, bucket_prefix = rules.threshold, flag.bucket_prefix
    not_targeted, rollout_0 = flag.not_targeted, flag.rollout_0
    no_stickiness, not_in_rollout = flag.no_stickiness, flag.not_in_rollout
    variants, total, variant_prefix = rules.variants, rules.total_weight, flag.variant_prefix

    Choices = tuple[tuple[tuple[int, EvaluationResult], ...], EvaluationResult | None]

    def choices(reason: Reason) -> Choices:
        """(cumulative weight, result) per variant when a hash picks one, else the result."""
        if not variants:
            return (), _result(flag, True, reason)
        if len(variants) == 1:
            return (), _variant_outcome(flag, variants[0], reason, None)
        final: Reason = SPLIT if reason == STATIC else reason
        return tuple((v.cumulative, _variant_outcome(flag, v, final, None)) for v in variants), None

    by_split = choices(SPLIT)
    by_everyone: Choices | None = None
    if threshold >= BUCKETS:
        by_everyone = choices(TARGETING_MATCH if targeted else STATIC)

    def fast(context: EvaluationContext) -> EvaluationResult:
        # 5. individual targeting: none. 6. groups, regions, rules
        if targeted:
            if groups is not None and context.user_group not in groups:
                return not_targeted
            if regions is not None and context.region not in regions:
                return not_targeted
            for attribute, in_context, matcher in checks:
                if in_context:
                    value = getattr(context, CONTEXT_FIELDS[attribute])
                else:
                    value = context.custom_attributes.get(attribute, _MISSING)
                if value is None or value is _MISSING or not matcher(value):
                    return not_targeted
        stickiness = context.user_id or context.agent_id or context.session_id
        # 7. percentage rollout
        if by_everyone is not None:
            pairs, only = by_everyone
        elif threshold <= 0:
            return rollout_0
        elif stickiness is None:
            return no_stickiness
        elif _hash(bucket_prefix + stickiness, 0, False) % BUCKETS < threshold:  # bucket()
            pairs, only = by_split
        else:
            return not_in_rollout
        # 8. variants (variant_slot(), inline)
        if only is not None:
            return only
        slot = _hash(variant_prefix + (stickiness or ""), 0, False) % total
        for cumulative, result in pairs:
            if slot < cumulative:
                return result
        return pairs[0][1]  # not reached: the last cumulative weight is the total

    return fast


def _with_variant(
    flag: CompiledFlag,
    rules: CompiledRules,
    reason: Reason,
    stickiness: str | None,
    detail: str | None,
) -> EvaluationResult:
    """8. variants: only when on; weights scaled by 1000, first cumulative weight above v."""
    variants = rules.variants
    if not variants:
        return _result(flag, True, reason, detail)
    chosen = variants[0]
    if len(variants) > 1:
        # variant_slot(), inline: this is every split flag's hot path
        slot = _hash(flag.variant_prefix + (stickiness or ""), 0, False) % rules.total_weight
        for candidate in variants:
            if slot < candidate.cumulative:
                chosen = candidate
                break
        if reason == STATIC:
            reason = SPLIT
    return _variant_outcome(flag, chosen, reason, detail)


def _variant_outcome(
    flag: CompiledFlag, chosen: CompiledVariant, reason: Reason, detail: str | None
) -> EvaluationResult:
    """The result of choosing `chosen`, made once per (variant, reason, detail)."""
    outcome = (chosen, reason, detail)  # the variant object: its environment's own
    result = flag.results.get(outcome)
    if result is None:
        result = EvaluationResult(
            flag_key=flag.key,
            enabled=True,
            variant=chosen.id,
            configuration=chosen.configuration,
            reason=reason,
            detail=detail,
            flag_version=flag.version,
        )
        flag.results[outcome] = result
    return result
