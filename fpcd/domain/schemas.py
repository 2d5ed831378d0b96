"""JSON Schema (2020-12) for configurations, made safe to run on anyone's schema.

- Regular expressions (`pattern`, `patternProperties`, and the `additionalProperties` /
  `unevaluatedProperties` that consult them) run on RE2, which matches in time linear in
  the input: `^(a+)+$` cannot backtrack.
- `$ref` resolves only inside the schema and the bundled 2020-12 meta-schemas; nothing is
  ever fetched.
- `check_schema` refuses, when the schema is stored, what would make every later write
  fail: a pattern RE2 cannot compile, a reference that does not resolve, and references
  that lead back to the same schema without descending into the document (validation
  would never end).

Time is bounded elsewhere (validation runs in a worker process with a budget): nested
`anyOf`/`oneOf` can still make one validation exponential, and no static check can tell
every such schema from a useful one.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from fpcd.domain.errors import FieldError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is reported to the caller, not on stderr

RegexError = re2.error


@lru_cache(maxsize=4096)
def regex(pattern: str) -> Any:
    """A compiled RE2 pattern (cached); raises RegexError for what RE2 does not support
    (lookaround, backreferences): features that need backtracking."""
    return re2.compile(pattern, options=_OPTIONS)


def _refuse_remote(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


#: Local references only: the schema itself plus the bundled meta-schemas (jsonschema adds
#: those to any registry it is given). The library's default would fetch remote URLs.
LOCAL_ONLY: Registry[Any] = Registry(retrieve=_refuse_remote)  # type: ignore[call-arg]


# -- keywords that use regular expressions, on RE2 ----------------------------------------


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and regex(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = regex(pattern)
        for key, value in instance.items():
            if compiled.search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = [regex(p) for p in schema.get("patternProperties", {})]
    return [
        key
        for key in instance
        if key not in properties and not any(p.search(key) is not None for p in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(repr(each) for each in sorted(extras, key=str))
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{names} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({names} {verb} unexpected)"
            )


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """The keys some keyword of `schema` evaluated (jsonschema's own walk, on RE2)."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            keys |= {
                k
                for k, v in instance.items()
                if next(validator.descend(v, subschema), None) is None
            }
    if "patternProperties" in schema:
        patterns = [regex(p) for p in schema["patternProperties"]]
        keys |= {k for k in instance if any(p.search(k) is not None for p in patterns)}
    for prop, subschema in schema.get("dependentSchemas", {}).items():
        if prop in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if next(validator.descend(instance, subschema), None) is None:
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    failed = [
        key
        for key in instance
        if key not in evaluated
        and next(validator.descend(instance[key], unevaluated, path=key, schema_path=key), None)
        is not None
    ]
    if failed:
        names = ", ".join(repr(each) for each in sorted(failed, key=str))
        verb = "was" if len(failed) == 1 else "were"
        if unevaluated is False:
            yield ValidationError(
                f"Unevaluated properties are not allowed ({names} {verb} unexpected)"
            )
        else:
            yield ValidationError(
                "Unevaluated properties are not valid under the given schema"
                f" ({names} {verb} unevaluated and invalid)"
            )


#: Draft 2020-12 with every regular expression on RE2.
ConfigSchemaValidator: Any = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties,
    },
)


def validator_for(schema: dict[str, Any]) -> Any:
    return ConfigSchemaValidator(schema, registry=LOCAL_ONLY)


# -- the check when a schema is stored ------------------------------------------------------

#: Keywords whose subschemas apply to the same instance (a loop through only these never
#: ends), and those whose subschemas apply to a part of it (or are never applied).
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP = ("dependentSchemas",)
_DEEPER_ONE = (
    "additionalProperties",
    "propertyNames",
    "items",
    "contains",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_DEEPER_MANY = ("prefixItems",)
_DEEPER_MAP = ("properties", "patternProperties", "$defs", "definitions")

Path = tuple[str | int, ...]


def check_schema(schema: Any, path_of: Any) -> list[FieldError]:
    """Everything that would make the schema fail on every write, each with its path
    (`path_of(parts)` renders one). An empty list: the schema can be stored."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        return [FieldError(path_of(list(error.path)), error.message)]
    if not isinstance(schema, dict):
        return []
    errors: list[FieldError] = []
    root = SPECIFICATIONS.combine(LOCAL_ONLY).resolver_with_root(
        DRAFT202012.create_resource(schema)
    )
    ours: set[int] = set()  # every subschema of this schema, by identity
    #: in-place edges: subschema id -> [(target id, path of the keyword that leads there)]
    edges: dict[int, list[tuple[int, Path]]] = {}

    def walk(node: Any, parts: Path, resolver: Any) -> None:
        if not isinstance(node, dict):
            return
        ours.add(id(node))
        here = edges.setdefault(id(node), [])
        if "$id" in node:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_regex(pattern, (*parts, "pattern"))
        for key in node.get("patternProperties", {}) or {}:
            _check_regex(key, (*parts, "patternProperties", key))
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            where = (*parts, keyword)
            try:
                resolved = resolver.lookup(ref)
            except (Unresolvable, ValueError):
                errors.append(
                    FieldError(
                        path_of(list(where)),
                        f"{ref!r} does not resolve inside this schema"
                        " (remote references are not fetched)",
                    )
                )
                continue
            if not isinstance(resolved.contents, dict | bool):
                errors.append(FieldError(path_of(list(where)), f"{ref!r} is not a schema"))
                continue
            here.append((id(resolved.contents), where))
        for keyword in _IN_PLACE_ONE + _DEEPER_ONE:
            if keyword in node:
                child = node[keyword]
                if keyword in _IN_PLACE_ONE and isinstance(child, dict):
                    here.append((id(child), (*parts, keyword)))
                walk(child, (*parts, keyword), resolver)
        for keyword in _IN_PLACE_MANY + _DEEPER_MANY:
            for i, child in enumerate(node.get(keyword, []) or []):
                if keyword in _IN_PLACE_MANY and isinstance(child, dict):
                    here.append((id(child), (*parts, keyword, i)))
                walk(child, (*parts, keyword, i), resolver)
        for keyword in _IN_PLACE_MAP + _DEEPER_MAP:
            for name, child in (node.get(keyword, {}) or {}).items():
                if keyword in _IN_PLACE_MAP and isinstance(child, dict):
                    here.append((id(child), (*parts, keyword, name)))
                walk(child, (*parts, keyword, name), resolver)

    def _check_regex(pattern: str, parts: Path) -> None:
        try:
            regex(pattern)
        except RegexError as error:
            reason = error.args[0].decode() if isinstance(error.args[0], bytes) else error
            errors.append(
                FieldError(
                    path_of(list(parts)),
                    f"not a pattern the linear-time engine (RE2) accepts: {reason}"
                    " (lookaround and backreferences are not supported)",
                )
            )

    try:
        walk(schema, (), root)
    except ValueError as error:  # a $id or $ref that is not a URI at all ("http://[::1")
        return [FieldError(path_of([]), f"a $id or $ref is not a usable URI: {error}")]
    errors += _loops(edges, ours, path_of)
    return errors


def _loops(
    edges: dict[int, list[tuple[int, Path]]], ours: set[int], path_of: Any
) -> list[FieldError]:
    """References that come back to the same subschema through in-place keywords only."""
    found: list[FieldError] = []
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        state[start] = 1
        stack: list[tuple[int, Iterator[tuple[int, Path]]]] = [(start, iter(edges[start]))]
        while stack:
            node, pending = stack[-1]
            step = next(pending, None)
            if step is None:
                state[node] = 2
                stack.pop()
                continue
            target, where = step
            if target not in ours:
                continue  # a bundled meta-schema: no way back into this one
            if state.get(target) == 1:
                found.append(
                    FieldError(
                        path_of(list(where)),
                        "leads back to the same schema without descending into the"
                        " document: validation would never end",
                    )
                )
            elif not state.get(target):
                state[target] = 1
                stack.append((target, iter(edges.get(target, []))))
    return found
