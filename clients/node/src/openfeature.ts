/**
 * FpcdProvider: an OpenFeature server provider (`@openfeature/server-sdk`) that evaluates
 * in-process from a ConfigurationClient's local state.
 *
 * Values by type: boolean is `enabled`; string, number and object are the served
 * variant's `configuration` (a string flag with a variant but no configuration gives the
 * variant id). A flag that is off gives the caller's default with fpcd's reason; a value
 * of the wrong type gives the default with TYPE_MISMATCH. Events: READY at start,
 * CONFIGURATION_CHANGED with the flag's key on every flag change, STALE while the daemon
 * is unreachable, READY again when the subscription is back.
 */

import {
  ErrorCode,
  OpenFeatureEventEmitter,
  ProviderEvents,
  type EvaluationContext as OpenFeatureContext,
  type JsonValue,
  type Provider,
  type ResolutionDetails,
} from "@openfeature/server-sdk";

import type { ConfigurationClient } from "./client.js";
import type { EvaluationContext, EvaluationResult } from "./flags.js";

const CONTEXT_FIELDS = new Set(["userId", "agentId", "sessionId", "userGroup", "region", "environment"]);

class InvalidContext extends Error {}

/** An OpenFeature context as an fpcd one: targetingKey is the user id, the rest custom. */
export function contextFrom(context: OpenFeatureContext | undefined): EvaluationContext {
  const out: EvaluationContext = {};
  const custom: Record<string, unknown> = {};
  let targetingKey: unknown;
  for (const [name, value] of Object.entries(context ?? {})) {
    if (name === "targetingKey") {
      targetingKey = value;
    } else if (CONTEXT_FIELDS.has(name)) {
      if (value === null || value === undefined) continue;
      if (typeof value !== "string") throw new InvalidContext(`context.${name} must be a string`);
      out[name] = value;
    } else if (name === "customAttributes" && value && typeof value === "object" && !Array.isArray(value)) {
      Object.assign(custom, value);
    } else {
      custom[name] = value;
    }
  }
  if (targetingKey !== undefined && targetingKey !== null) {
    if (typeof targetingKey !== "string") throw new InvalidContext("context.targetingKey must be a string");
    if (out.userId === undefined) out.userId = targetingKey;
  }
  out.customAttributes = custom;
  return out;
}

function metadataOf(result: EvaluationResult): Record<string, boolean | number | string> {
  const metadata: Record<string, boolean | number | string> = {
    enabled: result.enabled,
    flagVersion: result.flagVersion ?? 0,
  };
  if (result.detail !== undefined) metadata.detail = result.detail;
  return metadata;
}

export class FpcdProvider implements Provider {
  readonly metadata = { name: "fpcd" } as const;
  readonly runsOn = "server" as const;
  readonly events = new OpenFeatureEventEmitter();
  private readonly removers: (() => void)[] = [];

  constructor(readonly client: ConfigurationClient) {}

  async initialize(): Promise<void> {
    await this.client.start();
    const changed = (flagKey: string, _enabled: boolean, _flag: unknown, reason: string) =>
      this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged: [flagKey], message: reason });
    const stale = () => this.events.emit(ProviderEvents.Stale, { message: "fpcd is unreachable" });
    const ready = () => this.events.emit(ProviderEvents.Ready, { message: "fpcd subscription is live" });
    this.client.on("featureFlagUpdate", changed);
    this.client.on("disconnected", stale);
    this.client.on("connected", ready);
    this.removers.push(
      () => this.client.off("featureFlagUpdate", changed),
      () => this.client.off("disconnected", stale),
      () => this.client.off("connected", ready),
    );
  }

  async onClose(): Promise<void> {
    for (const remove of this.removers.splice(0)) remove();
  }

  private resolve<T>(
    flagKey: string,
    defaultValue: T,
    context: OpenFeatureContext,
    accepts: (value: unknown) => boolean,
    boolean = false,
  ): ResolutionDetails<T> {
    let result: EvaluationResult;
    try {
      result = this.client.evaluate(flagKey, contextFrom(context));
    } catch (error) {
      return { value: defaultValue, reason: "ERROR", errorCode: ErrorCode.INVALID_CONTEXT, errorMessage: (error as Error).message };
    }
    if (result.errorCode !== undefined) {
      return { value: defaultValue, reason: "ERROR", errorCode: ErrorCode.FLAG_NOT_FOUND, errorMessage: `no flag '${flagKey}'` };
    }
    const flagMetadata = metadataOf(result);
    let value: unknown;
    if (boolean) {
      value = result.enabled;
    } else if (!result.enabled || result.variant === null) {
      if (result.enabled) {
        return { value: defaultValue, reason: "ERROR", errorCode: ErrorCode.TYPE_MISMATCH, errorMessage: `flag '${flagKey}' has no variant`, flagMetadata };
      }
      return { value: defaultValue, reason: result.reason, flagMetadata };
    } else {
      value = result.configuration;
      if ((value === null || value === undefined) && accepts(result.variant)) value = result.variant;
    }
    if (!accepts(value)) {
      return { value: defaultValue, reason: "ERROR", errorCode: ErrorCode.TYPE_MISMATCH, errorMessage: `flag '${flagKey}' serves ${typeof value}`, flagMetadata };
    }
    const variant = result.variant ?? (result.enabled ? "on" : "off");
    return { value: value as T, reason: result.reason, variant, flagMetadata };
  }

  resolveBooleanEvaluation(flagKey: string, defaultValue: boolean, context: OpenFeatureContext): Promise<ResolutionDetails<boolean>> {
    return Promise.resolve(this.resolve(flagKey, defaultValue, context, (v) => typeof v === "boolean", true));
  }

  resolveStringEvaluation(flagKey: string, defaultValue: string, context: OpenFeatureContext): Promise<ResolutionDetails<string>> {
    return Promise.resolve(this.resolve(flagKey, defaultValue, context, (v) => typeof v === "string"));
  }

  resolveNumberEvaluation(flagKey: string, defaultValue: number, context: OpenFeatureContext): Promise<ResolutionDetails<number>> {
    return Promise.resolve(this.resolve(flagKey, defaultValue, context, (v) => typeof v === "number"));
  }

  resolveObjectEvaluation<T extends JsonValue>(flagKey: string, defaultValue: T, context: OpenFeatureContext): Promise<ResolutionDetails<T>> {
    return Promise.resolve(this.resolve(flagKey, defaultValue, context, (v) => v !== null && typeof v === "object"));
  }
}
