"""The request pipeline shared by every route, and the helpers routes use to read input.

Errors become RFC 9457 problem documents here and only here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any, NamedTuple, TypeVar, cast

import msgspec
from aiohttp import web
from aiohttp.web_urldispatcher import (
    DynamicResource,
    MatchInfoError,
    PlainResource,
    UrlMappingMatchInfo,
)
from yarl import URL

from fpcd.api.auth import Authenticator
from fpcd.api.encoded import EncodedHead, EncodedResponse
from fpcd.api.permissions import METRICS_SCRAPE, RateLimiter, Rule, rule_for
from fpcd.domain.access import authorize, authorize_everywhere
from fpcd.domain.configs import ANY_VERSION, check_limits
from fpcd.domain.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    FpcdError,
    Invalid,
    PayloadTooLarge,
    TooManyRequests,
    invalid_from,
)
from fpcd.domain.model import Caller
from fpcd.observe.logging import CURRENT_REQUEST_ID, REQUEST_ID
from fpcd.observe.stats import HttpStats, RouteStats

log = logging.getLogger("fpcd.api")
T = TypeVar("T")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
_encoder = msgspec.json.Encoder()
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Request ids: a random per-process prefix and a counter (unique, and cheaper than urandom).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


@dataclass
class RequestLimits:
    """Per-request input limits; updated in place on SIGHUP."""

    max_body_bytes: int = 1024 * 1024
    #: Every JSON body, not only stored documents, is held to these.
    max_json_depth: int = 32
    max_json_keys: int = 10_000


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
#: Who answers a public route (health probes): not a person, no rights.
PUBLIC_CALLER = Caller(subject="public")
CALLER = web.RequestKey("caller", Caller)
REQUEST_LIMITS = web.AppKey("request_limits", RequestLimits)
HTTP_STATS = web.AppKey("http_stats", HttpStats)
#: metrics.public: /metrics answers without a token.
PUBLIC_METRICS = web.AppKey("public_metrics", bool)


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []
    request_id: str = msgspec.field(default="", name="requestId")


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[FieldError] | None = None,
    request_id: str = "",
    headers: dict[str, str] | None = None,
) -> web.Response:
    doc = Problem(
        type=f"urn:fpcd:problem:{slug}" if slug else "about:blank",
        title=title,
        status=status,
        detail=detail,
        errors=errors or [],
        request_id=request_id,
    )
    return encoded_response(_encoder.encode(doc), status, PROBLEM_JSON, headers)


#: Encoded heads by (status, content type): a bounded set (the statuses fpcd answers).
_HEADS: dict[tuple[int, str], EncodedHead] = {}


def encoded_response(
    body: bytes, status: int, content_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A body of `content_type` with its status, written in one call (api/encoded.py)."""
    head = _HEADS.get((status, content_type))
    if head is None:
        if not 200 <= status < 600 or status in (204, 304):  # no body: aiohttp's rules
            return web.Response(
                status=status, body=body, content_type=content_type, headers=headers
            )
        head = _HEADS[(status, content_type)] = EncodedHead(status, {"Content-Type": content_type})
    response = EncodedResponse(head, body)
    if headers:
        response.headers.extend(headers)
    return response


def _from_error(error: FpcdError, request_id: str) -> web.Response:
    return problem_response(
        error.status,
        error.title,
        error.detail,
        slug=error.slug,
        errors=error.errors,
        request_id=request_id,
        headers=error.headers,
    )


def _from_http_exception(error: web.HTTPException, request_id: str) -> web.Response:
    detail = {
        404: "no such route",
        405: "method not allowed on this route",
        413: "request body too large",
    }.get(error.status, error.reason)
    return problem_response(
        error.status,
        error.reason,
        detail,
        request_id=request_id,
        headers={k: v for k, v in error.headers.items() if k in ("Allow", "Retry-After")},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteInfo(NamedTuple):
    """What the pipeline needs to know about a route, worked out once per route."""

    #: The resource's template (`/api/config/{service}`): the metrics label.
    template: str
    #: The metrics label of the method.
    method: str
    #: The permission row (None: no route, or a route without a row).
    rule: Rule | None
    #: The counters of this route and method, in the application's HttpStats.
    stats: RouteStats
    #: The application's authenticator and rate limiter.
    authenticator: Authenticator
    limiter: RateLimiter
    #: Open to anyone (health probes): no token, no rate limit.
    public: bool


#: Per route object (one per resource and method, for the app's life). Routes of
#: applications that are gone are forgotten when the table is full.
_ROUTE_INFO: dict[object, RouteInfo] = {}


def _route_info(request: web.Request) -> RouteInfo:
    route = request.match_info.route
    resource = route.resource
    template = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    app = request.app
    rule = rule_for(method, template)
    info = RouteInfo(
        template,
        method,
        rule,
        app[HTTP_STATS].route(template, method),
        app[AUTHENTICATOR],
        app[RATE_LIMITER],
        rule is not None and rule.action is None and not rule.websocket,
    )
    if resource is not None and route.method == request.method:  # not 404/405, not "*"
        if len(_ROUTE_INFO) >= 4096:
            _ROUTE_INFO.clear()
        _ROUTE_INFO[route] = info
    return info


async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, caller, permission, rate limit, errors as problem+json, metrics: the
    same for every route and door (`install_pipeline` puts it around every handler)."""
    started = perf_counter()
    info = _ROUTE_INFO.get(request.match_info.route) or _route_info(request)
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        request_id = given
    else:
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"
    request[REQUEST_ID] = request_id
    CURRENT_REQUEST_ID.set(request_id)  # every log line of this request carries it
    try:
        # (The raw target holds the query string: only a long one needs it parsed out.)
        if len(request.raw_path) > MAX_QUERY and len(request.query_string) > MAX_QUERY:
            raise BadRequest(f"the query string is longer than {MAX_QUERY} characters")
        # Without the request id: `caller()` adds it when a route needs it (audit).
        request[CALLER] = PUBLIC_CALLER if info.public else _admit(request, info)
        response = await handler(request)
    except FpcdError as error:
        response = _from_error(error, request_id)
    except web.RequestPayloadError:  # e.g. `Content-Encoding: gzip` on a body that is not
        bad_body = BadRequest("the request body cannot be decoded as its Content-Encoding says")
        response = _from_error(bad_body, request_id)
    except web.HTTPException as error:
        if error.status < 400:
            error.headers["X-Request-Id"] = request_id
            info.stats.record(error.status, perf_counter() - started)
            raise
        response = _from_http_exception(error, request_id)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = problem_response(
            500,
            "Internal error",
            "the request failed; the request id locates it in the daemon's log",
            request_id=request_id,
        )
    if type(response) is EncodedResponse:  # the common case, tested first
        response.request_id = request_id
        info.stats.record(response.status, perf_counter() - started)
    elif isinstance(response, web.WebSocketResponse):  # a whole session: no latency
        info.stats.record(response.status, None)
    else:
        response.headers["X-Request-Id"] = request_id
        info.stats.record(response.status, perf_counter() - started)
    return response


MAX_QUERY = 4096


class _NoRoute(web.AbstractResource):
    """The router's last resort: a path no route takes (404) or a method its route does
    not (405), answered through the pipeline as problem+json like any other error."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        super().__init__()
        self._router = router

    @property
    def canonical(self) -> str:
        return "/"  # indexed under "/": the router tries it after every other resource

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("no URL: this resource stands for no route")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("no prefix: this resource stands for no route")

    def get_info(self) -> Any:
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter(())

    async def resolve(self, request: web.Request) -> Any:
        allowed: set[str] = set()
        for resource in self._router.resources():
            if resource is not self:
                match, methods = await resource.resolve(request)
                if match is not None:  # not reached: the router tried every resource first
                    return None, set()
                allowed |= methods
        error: web.HTTPException = (
            web.HTTPMethodNotAllowed(request.method, allowed) if allowed else web.HTTPNotFound()
        )
        match = MatchInfoError(error)
        _pipe(match.route)
        return match, set()


def _pipe(route: web.AbstractRoute) -> None:
    # aiohttp calls `route.handler` (AbstractRoute keeps it in `_handler`). A partial adds
    # no Python frame: the pipeline costs a request one call, where a middleware costs
    # aiohttp's wrapper, a partial and the middleware.
    route._handler = partial(pipeline, handler=route.handler)


class _RememberingRouter(web.UrlDispatcher):
    """aiohttp's router, remembering the route and path values each (method, path) of a
    plain or dynamic resource resolved to: a repeated path skips the walk over the
    resource index, a coroutine per candidate and the pattern match. Which route a
    path takes depends only on the method and the path for those resources; 404s and
    405s are not remembered, nor paths longer than any valid one (names are at most 128
    characters), and the memory is bounded (cleared when full): at most 4,096 paths of at
    most 512 characters, whoever sends them."""

    _resolved: dict[tuple[str, str], tuple[web.AbstractRoute, dict[str, str]]]

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        key = (request.method, request.rel_url.path_safe)
        hit = self._resolved.get(key)
        if hit is not None:
            return UrlMappingMatchInfo(hit[1], hit[0])  # (its dict() copies the values)
        match_info = await super().resolve(request)
        if isinstance(match_info, UrlMappingMatchInfo) and not isinstance(
            match_info, MatchInfoError
        ):
            resource = match_info.route.resource
            if type(resource) in (PlainResource, DynamicResource) and len(key[1]) <= 512:
                if len(self._resolved) >= 4096:
                    self._resolved.clear()
                self._resolved[key] = (match_info.route, dict(match_info))
        return match_info


def install_pipeline(app: web.Application) -> None:
    """Put `pipeline` around every route's handler, and answer what no route takes through
    it too. Call once the routes are added."""
    for route in app.router.routes():
        _pipe(route)
    app.router.register_resource(_NoRoute(app.router))
    app.router.__class__ = _RememberingRouter  # same state, one method more
    cast(_RememberingRouter, app.router)._resolved = {}


def _admit(request: web.Request, info: RouteInfo) -> Caller:
    """Who is calling, and may they: 401, 403 and 429 are decided here."""
    rule = info.rule
    if rule is None:
        if request.match_info.http_exception is not None:
            return PUBLIC_CALLER  # no such route: the handler raises 404/405
        raise Forbidden("this route has no permission rule")  # a bug, refused safely
    if rule.action is None and not rule.websocket:
        return PUBLIC_CALLER
    if rule is METRICS_SCRAPE and request.app.get(PUBLIC_METRICS, False):
        return PUBLIC_CALLER
    authenticator = info.authenticator
    found = authenticator.identify(request, optional=rule.websocket)
    caller = found if found is not None else PUBLIC_CALLER
    service = request.match_info.get(rule.service) if rule.service else None
    # An early refusal only: the service called next decides again, with everything it
    # knows (the environment, a service named in the body).
    if rule.action is not None:
        if rule.unrestricted:
            authorize_everywhere(caller, rule.action)
        else:
            authorize(caller, rule.action, service=service, environment=rule.environment)
    retry = info.limiter.check(caller.subject, service)
    if retry is not None:
        raise TooManyRequests("rate limit exceeded; slow down", headers={"Retry-After": str(retry)})
    return caller


# -- reading input ---------------------------------------------------------------


def caller(request: web.Request) -> Caller:
    """The request's caller, carrying its request id (what the audit log records)."""
    who = request[CALLER]
    request_id = request[REQUEST_ID]
    if who.request_id != request_id:
        who = request[CALLER] = msgspec.structs.replace(who, request_id=request_id)
    return who


def json_response(
    value: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return encoded_response(_encoder.encode(value), status, JSON, headers)


async def read_body(request: web.Request) -> bytes:
    """The body, refused with 413 as soon as it passes the configured limit."""
    limit = request.app[REQUEST_LIMITS].max_body_bytes
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
        try:
            return await request.content.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise BadRequest("the request body is shorter than its Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        raise invalid_from(error) from None
    except msgspec.DecodeError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def decode_json(body: bytes, kind: type[T], limits: RequestLimits | None = None) -> T:
    """The body as `kind`, decoded once. A body that might break the depth or key limits
    (whatever the type lets through: `Any` fields) is decoded untyped, walked, and
    converted to `kind` (a conversion, not a second parse)."""
    if limits is None or _within_limits(body, limits):
        return _decode(body, kind)
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        _decode(body, kind)  # raises: the typed decode names the problem, as for any body
        raise BadRequest("malformed JSON") from None  # (not reached)
    try:
        decoded = msgspec.convert(raw, kind)
    except msgspec.ValidationError as error:
        raise invalid_from(error) from None
    errors = check_limits(
        raw,
        max_depth=limits.max_json_depth + 2,  # the body and its wrapper objects
        max_keys=limits.max_json_keys + 64,
        path="$",
    )
    if errors:
        raise Invalid("the request breaks a size rule", errors=errors)
    return decoded


def _within_limits(body: bytes, limits: RequestLimits) -> bool:
    """True when the body cannot break the depth and key limits, by counting bytes (in C):
    every level opens with `{` or `[` and every key is followed by `:`, so these counts
    bound depth and keys from above. Small bodies (evaluations, most writes) skip the walk.
    """
    return (
        body.count(b"{") + body.count(b"[") <= limits.max_json_depth + 2
        and body.count(b":") <= limits.max_json_keys + 64
    )


async def body_as(request: web.Request, kind: type[T], *, empty_ok: bool = False) -> T:
    body = await read_body(request)
    if empty_ok and not body.strip():
        body = b"{}"
    return decode_json(body, kind, request.app[REQUEST_LIMITS])


def query_int(
    request: web.Request, name: str, *, minimum: int = 0, maximum: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is true
        raise BadRequest(
            f"query parameter {name} must be a whole number",
            errors=[FieldError(f"query.{name}", "expected a whole number")],
        )
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise BadRequest(
            f"query parameter {name} must be {bound}",
            errors=[FieldError(f"query.{name}", f"must be {bound}")],
        )
    return value


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequest(
        f"query parameter {name} must be true or false",
        errors=[FieldError(f"query.{name}", "expected true or false")],
    )


def page_params(request: web.Request, *, default_limit: int = 50) -> tuple[int, int]:
    limit = query_int(request, "limit", minimum=1, maximum=1000)
    offset = query_int(request, "offset", minimum=0)
    return (default_limit if limit is None else limit), (offset or 0)


def etag_matches(header: str, etag: str) -> bool:
    """`If-None-Match` comparison (weak, as RFC 9110 asks for GET)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def expected_version(request: web.Request, from_body: int | None) -> int | None:
    """The version a write expects to replace, from `If-Match` or the body's `expectedVersion`."""
    header = request.headers.get("If-Match")
    if header is None:
        return from_body
    header = header.strip()
    if header == "*":
        version = ANY_VERSION
    else:
        match = re.fullmatch(r'(?:W/)?"(\d{1,18})(?:\+\d{1,18})?"', header)
        if match is None:
            raise BadRequest(
                'If-Match must be an ETag such as "3" as returned by GET',
                errors=[FieldError("header.If-Match", 'expected "<version>"')],
            )
        version = int(match.group(1))
    if from_body is not None and from_body != version:
        raise BadRequest(
            "If-Match and expectedVersion disagree",
            errors=[FieldError("$.expectedVersion", "differs from If-Match")],
        )
    return version
