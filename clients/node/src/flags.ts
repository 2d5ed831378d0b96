/**
 * Feature flags evaluated in-process, exactly as the daemon does (fpcd/domain/flags.py).
 *
 * A flag document (what `GET /api/features` and FEATURE_FLAG_UPDATE carry) is compiled
 * once per version: sets, thresholds, dates, semvers and numbers are prepared then, so
 * an evaluation does no parsing. The bucketing formula is shared by every SDK:
 * `murmur3_x86_32(utf8(flagKey + ":" + id), seed 0) % 100000`, on iff the bucket is
 * below `round(percentage * 1000)`. The shared vector file
 * (tests/fixtures/flag_vectors.json) proves this engine and the Python one agree.
 */

import murmurhash from "murmurhash";

export const BUCKETS = 100_000;

export type Reason = "STATIC" | "DEFAULT" | "TARGETING_MATCH" | "SPLIT" | "DISABLED" | "ERROR";

/** Who a flag is evaluated for (the daemon's context fields, wire names). */
export interface EvaluationContext {
  userId?: string | null;
  agentId?: string | null;
  sessionId?: string | null;
  userGroup?: string | null;
  region?: string | null;
  environment?: string | null;
  customAttributes?: Record<string, unknown>;
  /** Other fields are ignored, as the daemon ignores them. */
  [other: string]: unknown;
}

/** The result shape of `POST /api/features/evaluate` (absent fields are omitted). */
export interface EvaluationResult {
  flagKey: string;
  enabled: boolean;
  variant: string | null;
  configuration: unknown;
  reason: Reason;
  detail?: string;
  errorCode?: string;
  flagVersion?: number;
}

export interface Variant {
  id: string;
  name?: string;
  weight?: number;
  configuration?: unknown;
}

export interface Rollout {
  percentage?: number;
  userGroups?: string[];
  regions?: string[];
  startDate?: string | null;
  endDate?: string | null;
  userIds?: string[];
  agentIds?: string[];
  excludeUserIds?: string[];
}

export interface Rule {
  attribute: string;
  operator: string;
  values: unknown[];
}

export interface FlagDocument {
  key: string;
  name?: string;
  description?: string;
  enabled?: boolean;
  rollout?: Rollout;
  variants?: Variant[];
  dependencies?: (string | { flag: string; variant?: string | null })[];
  tags?: string[];
  rules?: Rule[];
  environments?: Record<string, { enabled?: boolean | null; rollout?: Rollout | null; variants?: Variant[] | null }>;
  version?: number;
  archived?: boolean;
  [other: string]: unknown;
}

/** Context fields a rule may name. */
const CONTEXT_FIELD_NAMES = ["userId", "agentId", "sessionId", "userGroup", "region", "environment"];
const CONTEXT_FIELDS = new Set(CONTEXT_FIELD_NAMES);

// -- the bucketing formula ------------------------------------------------------------

// The hash input as UTF-8 in one reused buffer: murmurhash would build a TextEncoder and a
// new array per call for a string, which is half the cost of an evaluation.
const encoder = new TextEncoder();
let scratch = new Uint8Array(1024);

function utf8(text: string): Uint8Array {
  if (text.length * 3 > scratch.length) scratch = new Uint8Array(text.length * 3);
  const { written } = encoder.encodeInto(text, scratch);
  return scratch.subarray(0, written);
}

/** The rollout bucket, 0..99,999: murmur3_x86_32(utf8(key:id), 0) % 100000. */
export function bucket(flagKey: string, stickinessId: string): number {
  return murmurhash.v3(utf8(`${flagKey}:${stickinessId}`), 0) % BUCKETS;
}

/** Variant choice, independent of the rollout bucket (a different hash input). */
export function variantSlot(flagKey: string, stickinessId: string, total: number): number {
  return murmurhash.v3(utf8(`${flagKey}:variant:${stickinessId}`), 0) % total;
}

/** Python's round(): half to even, on the exact double. */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// -- values compared as the daemon compares them ---------------------------------------

const FLOAT = /^[+-]?(?:(?:\d(?:_?\d)*)(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?$/;
const SPECIAL = /^([+-]?)(inf|infinity|nan)$/i;

/** A number as Python's float() reads it (numbers, numeric strings); null otherwise. */
export function toNumber(value: unknown): number | null {
  if (typeof value === "number") return value;
  if (typeof value !== "string") return null;
  const text = value.trim();
  if (FLOAT.test(text)) return Number(text.replace(/_/g, ""));
  const special = SPECIAL.exec(text);
  if (special) {
    if (special[2].toLowerCase() === "nan") return Number.NaN;
    return special[1] === "-" ? -Infinity : Infinity;
  }
  return null;
}

function isObject(value: unknown): value is object {
  return value !== null && typeof value === "object";
}

/** Python's `==` between JSON values (True == 1, 1 == 1.0, deep for lists and objects). */
export function pyEqual(a: unknown, b: unknown): boolean {
  const na = typeof a === "number" || typeof a === "boolean";
  const nb = typeof b === "number" || typeof b === "boolean";
  if (na || nb) return na && nb && Number(a) === Number(b);
  if (a === null || b === null) return a === b;
  if (typeof a === "string" || typeof b === "string") return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => pyEqual(item, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    const ob = b as Record<string, unknown>;
    const oa = a as Record<string, unknown>;
    return ka.every((k) => Object.prototype.hasOwnProperty.call(ob, k) && pyEqual(oa[k], ob[k]));
  }
  return false;
}

// Semantic versions, as fpcd/domain/flags.py's semver_key.
const SEMVER = /^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$/;

type SemverKey = [number, number, number, (number | string)[][]];

export function semverKey(value: string): SemverKey | null {
  const match = SEMVER.exec(value.trim());
  if (!match) return null;
  const [, major, minor, patch, pre] = match;
  let preKey: (number | string)[][];
  if (pre === undefined) {
    preKey = [[1]];
  } else {
    preKey = [[0], ...pre.split(".").map((p) => (/^\d+$/.test(p) ? [0, Number(p), ""] : [1, 0, p]))];
  }
  return [Number(major), Number(minor), Number(patch), preKey];
}

/** Python's tuple ordering over numbers, strings and nested arrays: -1, 0 or 1. */
function compareTuples(a: unknown, b: unknown): number {
  if (Array.isArray(a) && Array.isArray(b)) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) {
      const c = compareTuples(a[i], b[i]);
      if (c !== 0) return c;
    }
    return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
  }
  if (typeof a === "string" && typeof b === "string") {
    // Python compares code points; for the ASCII a semver allows, code units agree.
    return a === b ? 0 : a < b ? -1 : 1;
  }
  const x = Number(a);
  const y = Number(b);
  return x === y ? 0 : x < y ? -1 : 1;
}

// ISO 8601 instants, as Python's datetime.fromisoformat reads them (naive means UTC).
const ISO_DATE = /^(\d{4})-?(\d{2})-?(\d{2})$/;
const ISO_TIME = /^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,](\d+))?)?)?$/;
const ISO_OFFSET = /^(?:(Z)|([+-])(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?)$/;
const ISO_WEEK = /^(\d{4})-?W(\d{2})(?:-?(\d))?$/;

function daysFromCivil(y: number, m: number, d: number): number {
  // Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date.
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function daysInMonth(y: number, m: number): number {
  if (m === 2) return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28;
  return [4, 6, 9, 11].includes(m) ? 30 : 31;
}

/** Epoch seconds of an ISO 8601 date or date-time; null if it is not one. */
export function parseInstant(value: unknown): number | null {
  if (typeof value !== "string") return null;
  const text = value.trim();
  let datePart = text;
  let rest = "";
  // The date is 10 (YYYY-MM-DD, YYYY-Www-D), 8 (YYYYMMDD, YYYY-Www, YYYYWwwD) or 7
  // (YYYYWww) characters; any one character separates it from the time, as in Python.
  const at = dateLength(text);
  if (at < 0) return null;
  if (text.length > at) {
    datePart = text.slice(0, at);
    rest = text.slice(at + 1);
    if (!rest) return null;
  }
  const days = parseDate(datePart);
  if (days === null) return null;
  let seconds = days * 86400;
  if (rest) {
    const split = /[Z+-]/.exec(rest);
    const timePart = split ? rest.slice(0, split.index) : rest;
    const offsetPart = split ? rest.slice(split.index) : "";
    const time = ISO_TIME.exec(timePart);
    if (!time) return null;
    const h = Number(time[1]);
    const mi = time[2] === undefined ? 0 : Number(time[2]);
    const s = time[3] === undefined ? 0 : Number(time[3]);
    if (h > 23 || mi > 59 || s > 59) return null;
    let fraction = 0;
    if (time[4] !== undefined) fraction = Number(`0.${time[4].slice(0, 6)}`);
    seconds += h * 3600 + mi * 60 + s;
    if (offsetPart) {
      const offset = ISO_OFFSET.exec(offsetPart);
      if (!offset) return null;
      if (!offset[1]) {
        const sign = offset[2] === "-" ? -1 : 1;
        const oh = Number(offset[3]);
        const om = offset[4] === undefined ? 0 : Number(offset[4]);
        const os = offset[5] === undefined ? 0 : Number(offset[5]);
        if (oh > 23 || om > 59 || os > 59) return null;
        seconds -= sign * (oh * 3600 + om * 60 + os);
        if (offset[6] !== undefined) fraction -= sign * Number(`0.${offset[6]}`);
      }
    }
    seconds += fraction;
  }
  return seconds;
}

function dateLength(text: string): number {
  if (/^\d{4}-\d{2}-\d{2}/.test(text) || /^\d{4}-W\d{2}-\d/.test(text)) return 10;
  if (/^\d{8}/.test(text) || /^\d{4}-W\d{2}/.test(text) || /^\d{4}W\d{3}/.test(text)) return 8;
  if (/^\d{4}W\d{2}/.test(text)) return 7;
  return -1;
}

/** Days since 1970-01-01 of a calendar or ISO week date; null if not a valid one. */
function parseDate(text: string): number | null {
  const week = ISO_WEEK.exec(text);
  if (week) {
    const y = Number(week[1]);
    const w = Number(week[2]);
    const d = week[3] === undefined ? 1 : Number(week[3]);
    if (y < 1 || d < 1 || d > 7 || w < 1) return null;
    // Monday of week 1 is the Monday on or before January 4th.
    const jan4 = daysFromCivil(y, 1, 4);
    const weekday = (((jan4 + 3) % 7) + 7) % 7; // 0 = Monday (1970-01-01 was a Thursday)
    const weeks = daysFromCivil(y + 1, 1, 4) - ((((daysFromCivil(y + 1, 1, 4) + 3) % 7) + 7) % 7);
    const monday = jan4 - weekday;
    if (w > (weeks - monday) / 7) return null;
    return monday + (w - 1) * 7 + (d - 1);
  }
  const date = ISO_DATE.exec(text);
  if (!date) return null;
  if (text.length === 10 && (text[4] !== "-" || text[7] !== "-")) return null;
  const y = Number(date[1]);
  const mo = Number(date[2]);
  const d = Number(date[3]);
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > daysInMonth(y, mo)) return null;
  return daysFromCivil(y, mo, d);
}

// -- compilation ------------------------------------------------------------------------

type Matcher = (value: unknown) => boolean;

interface CompiledRule {
  attribute: string;
  inContext: boolean;
  matches: Matcher;
}

interface CompiledVariant {
  id: string;
  configuration: unknown;
  cumulative: number;
}

interface CompiledRules {
  enabled: boolean;
  dependencies: [string, string | null][];
  start: number | null;
  end: number | null;
  exclude: Set<string>;
  userIds: Set<string>;
  agentIds: Set<string>;
  groups: Set<string> | null;
  regions: Set<string> | null;
  rules: CompiledRule[];
  targeted: boolean;
  threshold: number;
  variants: CompiledVariant[];
  totalWeight: number;
}

export interface CompiledFlag {
  key: string;
  version: number;
  archived: boolean;
  document: FlagDocument;
  base: CompiledRules;
  byEnvironment: Map<string, CompiledRules>;
}

function compileRule(rule: Rule): CompiledRule {
  const op = rule.operator;
  const values = rule.values ?? [];
  const first = values[0];
  let matches: Matcher;
  switch (op) {
    case "eq":
      matches = (v) => pyEqual(v, first);
      break;
    case "neq":
      matches = (v) => !pyEqual(v, first);
      break;
    case "in":
    case "not_in": {
      // Python keeps hashable values in a frozenset: a list or object is never a member.
      const hashable = values.every((m) => !isObject(m));
      const member = (v: unknown) => !(hashable && isObject(v)) && values.some((m) => pyEqual(v, m));
      matches = op === "in" ? member : (v) => !member(v);
      break;
    }
    case "contains":
      matches = (v) => typeof v === "string" && values.some((n) => v.includes(String(n)));
      break;
    case "starts_with":
      matches = (v) => typeof v === "string" && values.some((n) => v.startsWith(String(n)));
      break;
    case "ends_with":
      matches = (v) => typeof v === "string" && values.some((n) => v.endsWith(String(n)));
      break;
    case "gt":
    case "gte":
    case "lt":
    case "lte": {
      const bound = toNumber(typeof first === "boolean" ? null : first) ?? Number.NaN;
      const compare: (n: number) => boolean =
        op === "gt" ? (n) => n > bound : op === "gte" ? (n) => n >= bound : op === "lt" ? (n) => n < bound : (n) => n <= bound;
      matches = (v) => {
        const n = typeof v === "boolean" ? null : toNumber(v);
        return n !== null && compare(n);
      };
      break;
    }
    case "semver_eq":
    case "semver_gt":
    case "semver_lt": {
      const target = typeof first === "string" ? semverKey(first) : null;
      matches = (v) => {
        const key = typeof v === "string" ? semverKey(v) : null;
        if (key === null || target === null) return false;
        const c = compareTuples(key, target);
        return op === "semver_eq" ? c === 0 : op === "semver_gt" ? c > 0 : c < 0;
      };
      break;
    }
    case "before":
    case "after": {
      const instant = parseInstant(first);
      matches = (v) => {
        const t = parseInstant(v);
        return t !== null && instant !== null && (op === "before" ? t < instant : t > instant);
      };
      break;
    }
    default:
      matches = () => false; // a newer daemon's operator: never matches
  }
  return { attribute: rule.attribute, inContext: CONTEXT_FIELDS.has(rule.attribute), matches };
}

function dependencyKeys(doc: FlagDocument): [string, string | null][] {
  return (doc.dependencies ?? []).map((dep) =>
    typeof dep === "string" ? [dep, null] : [dep.flag, dep.variant ?? null],
  );
}

function compileRules(
  enabled: boolean,
  rollout: Rollout,
  variants: Variant[],
  rules: Rule[],
  dependencies: [string, string | null][],
): CompiledRules {
  const compiled: CompiledVariant[] = [];
  let total = 0;
  for (const variant of variants) {
    const weight = roundHalfEven((variant.weight ?? 1) * 1000);
    if (weight <= 0) continue;
    total += weight;
    compiled.push({ id: variant.id, configuration: variant.configuration ?? null, cumulative: total });
  }
  const groups = rollout.userGroups ?? [];
  const regions = rollout.regions ?? [];
  const compiledRules = rules.map(compileRule);
  return {
    enabled,
    dependencies,
    start: rollout.startDate ? parseInstant(rollout.startDate) : null,
    end: rollout.endDate ? parseInstant(rollout.endDate) : null,
    exclude: new Set(rollout.excludeUserIds ?? []),
    userIds: new Set(rollout.userIds ?? []),
    agentIds: new Set(rollout.agentIds ?? []),
    groups: groups.length ? new Set(groups) : null,
    regions: regions.length ? new Set(regions) : null,
    rules: compiledRules,
    targeted: groups.length > 0 || regions.length > 0 || compiledRules.length > 0,
    threshold: roundHalfEven((rollout.percentage ?? 100) * 1000),
    variants: compiled,
    totalWeight: total,
  };
}

/** The only way to build what `evaluate` reads; null for an archived document. */
export function compileFlag(doc: FlagDocument): CompiledFlag | null {
  if (doc.archived) return null;
  const deps = dependencyKeys(doc);
  const rollout = doc.rollout ?? {};
  const variants = doc.variants ?? [];
  const rules = doc.rules ?? [];
  const enabled = doc.enabled ?? false;
  const byEnvironment = new Map<string, CompiledRules>();
  for (const [env, override] of Object.entries(doc.environments ?? {})) {
    // Only the rollout fields an override gives replace the base rollout's.
    const merged: Rollout = { ...rollout };
    if (override.rollout) {
      for (const [field, value] of Object.entries(override.rollout)) {
        if (value !== undefined) (merged as Record<string, unknown>)[field] = value;
      }
    }
    byEnvironment.set(
      env,
      compileRules(
        override.enabled === undefined || override.enabled === null ? enabled : override.enabled,
        merged,
        override.variants ?? variants,
        rules,
        deps,
      ),
    );
  }
  return {
    key: doc.key,
    version: doc.version ?? 0,
    archived: false,
    document: doc,
    base: compileRules(enabled, rollout, variants, rules, deps),
    byEnvironment,
  };
}

export type Lookup = (key: string) => CompiledFlag | undefined;

// -- evaluation -------------------------------------------------------------------------

function result(
  flag: CompiledFlag,
  enabled: boolean,
  reason: Reason,
  detail: string | null = null,
  variant: CompiledVariant | null = null,
): EvaluationResult {
  const out: EvaluationResult = {
    flagKey: flag.key,
    enabled,
    variant: variant ? variant.id : null,
    configuration: variant ? variant.configuration : null,
    reason,
  };
  if (detail !== null) out.detail = detail;
  if (flag.version !== 0) out.flagVersion = flag.version;
  return out;
}

function notFound(key: string): EvaluationResult {
  return { flagKey: key, enabled: false, variant: null, configuration: null, reason: "ERROR", errorCode: "FLAG_NOT_FOUND" };
}

function rulesFor(flag: CompiledFlag, environment: string | null | undefined): CompiledRules {
  if (environment === null || environment === undefined) return flag.base;
  return flag.byEnvironment.get(environment) ?? flag.base;
}

function present(value: string | null | undefined): value is string {
  return value !== null && value !== undefined;
}

/** A context as the daemon accepts it: the context fields must be strings. */
export function checkContext(context: EvaluationContext): void {
  for (const field of CONTEXT_FIELD_NAMES) {
    const value = context[field];
    if (value !== undefined && value !== null && typeof value !== "string") {
      throw new TypeError(`context.${field} must be a string`);
    }
  }
  const custom = context.customAttributes;
  if (custom !== undefined && (custom === null || typeof custom !== "object" || Array.isArray(custom))) {
    throw new TypeError("context.customAttributes must be an object");
  }
}

/**
 * Evaluate one flag for `context` at `now` (epoch seconds), in the daemon's order.
 * `flag` is compiled, or a key to find with `lookup` (unknown -> FLAG_NOT_FOUND);
 * `defaultEnvironment` applies when the context names none (a client's environment).
 */
export function evaluate(
  flag: CompiledFlag | string,
  context: EvaluationContext,
  now: number,
  lookup: Lookup,
  defaultEnvironment: string | null = null,
): EvaluationResult {
  return evaluateAt(flag, context, now, lookup, context.environment ?? defaultEnvironment, 0);
}

function evaluateAt(
  flag: CompiledFlag | string,
  context: EvaluationContext,
  now: number,
  lookup: Lookup,
  environment: string | null,
  depth: number,
): EvaluationResult {
  if (typeof flag === "string") {
    const found = lookup(flag);
    if (found === undefined || found.archived) return notFound(flag);
    flag = found;
  }
  const rules = rulesFor(flag, environment);
  // 2. disabled
  if (!rules.enabled) return result(flag, false, "DISABLED");
  // 3. dependencies
  for (const [depKey, depVariant] of rules.dependencies) {
    if (depth > 16) return result(flag, false, "DISABLED", `dependency:${depKey}`);
    const dep = evaluateAt(depKey, context, now, lookup, environment, depth + 1);
    if (!dep.enabled || (depVariant !== null && dep.variant !== depVariant)) {
      return result(flag, false, "DISABLED", `dependency:${depKey}`);
    }
  }
  // 4. schedule
  if (rules.start !== null && now < rules.start) return result(flag, false, "DISABLED", "scheduled");
  if (rules.end !== null && now >= rules.end) return result(flag, false, "DISABLED", "ended");
  const userId = context.userId;
  const agentId = context.agentId;
  const stickiness = userId || agentId || (context.sessionId ?? null);
  // 5. individual targeting
  if (present(userId) && rules.exclude.has(userId)) return result(flag, false, "TARGETING_MATCH", "excluded");
  if ((present(userId) && rules.userIds.has(userId)) || (present(agentId) && rules.agentIds.has(agentId))) {
    return withVariant(flag, rules, "TARGETING_MATCH", stickiness, "targeted");
  }
  // 6. groups, regions, rules
  if (rules.targeted) {
    const group = context.userGroup;
    if (rules.groups !== null && !(present(group) && rules.groups.has(group))) {
      return result(flag, false, "DEFAULT", "not_targeted");
    }
    const region = context.region;
    if (rules.regions !== null && !(present(region) && rules.regions.has(region))) {
      return result(flag, false, "DEFAULT", "not_targeted");
    }
    const custom = context.customAttributes ?? {};
    for (const rule of rules.rules) {
      const value = rule.inContext
        ? rule.attribute === "environment"
          ? environment
          : context[rule.attribute]
        : Object.prototype.hasOwnProperty.call(custom, rule.attribute)
          ? custom[rule.attribute]
          : undefined;
      if (value === null || value === undefined || !rule.matches(value)) {
        return result(flag, false, "DEFAULT", "not_targeted");
      }
    }
  }
  // 7. percentage rollout
  const threshold = rules.threshold;
  let reason: Reason;
  if (threshold >= BUCKETS) {
    reason = rules.targeted ? "TARGETING_MATCH" : "STATIC";
  } else if (threshold <= 0) {
    return result(flag, false, "DEFAULT", "rollout_0");
  } else if (stickiness === null) {
    return result(flag, false, "DEFAULT", "no_stickiness_id");
  } else if (bucket(flag.key, stickiness) < threshold) {
    reason = "SPLIT";
  } else {
    return result(flag, false, "SPLIT", "not_in_rollout");
  }
  return withVariant(flag, rules, reason, stickiness, null);
}

/** 8. variants: only when on; weights scaled by 1000, first cumulative weight above v. */
function withVariant(
  flag: CompiledFlag,
  rules: CompiledRules,
  reason: Reason,
  stickiness: string | null,
  detail: string | null,
): EvaluationResult {
  const variants = rules.variants;
  if (variants.length === 0) return result(flag, true, reason, detail);
  let chosen = variants[0];
  if (variants.length > 1) {
    const slot = variantSlot(flag.key, stickiness ?? "", rules.totalWeight);
    for (const candidate of variants) {
      if (slot < candidate.cumulative) {
        chosen = candidate;
        break;
      }
    }
    if (reason === "STATIC") reason = "SPLIT";
  }
  return result(flag, true, reason, detail, chosen);
}

/**
 * Steps 2-4 for everyone: enabled in `environment`, dependencies active, within its dates.
 * What a FEATURE_FLAG_UPDATE reports as `enabled`.
 */
export function active(
  flag: CompiledFlag | undefined,
  environment: string | null | undefined,
  now: number,
  lookup: Lookup,
  depth = 0,
): boolean {
  if (flag === undefined || flag.archived || depth > 16) return false;
  const rules = rulesFor(flag, environment);
  if (!rules.enabled) return false;
  if (rules.start !== null && now < rules.start) return false;
  if (rules.end !== null && now >= rules.end) return false;
  return rules.dependencies.every(([dep]) => active(lookup(dep), environment, now, lookup, depth + 1));
}
