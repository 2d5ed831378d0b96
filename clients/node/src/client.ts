/**
 * ConfigurationClient: a service's live copy of its configuration and of every flag.
 *
 * The original's API (`getConfiguration()`, `evaluateFlags(ctx)`,
 * `on('configurationUpdate', cfg)`, `on('featureFlagUpdate', (flagKey, enabled))`), plus
 * what a production service needs: a cache file so it starts while fpcd is down, a
 * WebSocket subscription that reconnects with backoff and replays from `lastVersion`,
 * request timeouts, local evaluation with the daemon's bucketing (microseconds, no round
 * trip) and evaluation counts sent back for analytics.
 */

import { EventEmitter } from "node:events";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import WebSocket from "ws";

import {
  active,
  checkContext,
  compileFlag,
  evaluate as evaluateFlag,
  type CompiledFlag,
  type EvaluationContext,
  type EvaluationResult,
  type FlagDocument,
} from "./flags.js";
import { FpcdClientError, FpcdUnavailable, detailOf, request, type Transport } from "./http.js";

export interface ClientOptions {
  /** The daemon's REST API, e.g. `http://localhost:3001`. */
  apiUrl?: string;
  /** The WebSocket endpoint, e.g. `ws://localhost:8080`; default `/ws` on the API. */
  wsUrl?: string;
  /** The daemon's API Unix socket (`fpcd.sock`): no token needed, no TCP. */
  socketPath?: string;
  serviceName: string;
  environment: string;
  /** A bearer token; none when the daemon grants anonymous access (`auth.anonymous_role`). */
  token?: string;
  /** Where to keep the last known state, so the service can start while fpcd is down. */
  cacheFile?: string;
  /** Subscribe to flag changes too (default true). */
  subscribeFlags?: boolean;
  /** Timeout of one HTTP request, in ms (default 10,000). */
  requestTimeout?: number;
  /** First reconnect delay in ms (default 500), doubled up to `maxReconnectDelay` (30,000). */
  reconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How often evaluation counts are sent, in ms (default 10,000); 0 sends only at close. */
  analyticsInterval?: number;
  /** The clock, in epoch milliseconds (tests move it). */
  now?: () => number;
}

/** One (service, environment)'s effective configuration, as the daemon sent it. */
export interface Configuration {
  serviceName: string;
  environment: string;
  version: number;
  baseVersion?: number | null;
  config: Record<string, unknown>;
  checksum?: string;
}

export interface ConfigurationReload {
  version: number;
  force: boolean;
}

/** What the cache file holds: the Python client's format, so either can read it. */
interface CacheFile {
  format: 1;
  serviceName: string;
  environment: string;
  savedAt: number;
  configuration: Configuration | null;
  flags: FlagDocument[];
}

export interface ClientEvents {
  configurationUpdate: [config: Record<string, unknown>, update: Configuration];
  featureFlagUpdate: [flagKey: string, enabled: boolean, flag: FlagDocument | null, reason: string];
  configurationReload: [reload: ConfigurationReload];
  connected: [];
  disconnected: [];
  error: [error: Error];
}

const COUNTS_PER_REQUEST = 10_000;
const MAX_PENDING_CELLS = 100_000;

/** Position of a configuration version: updates only ever move it forward. */
function position(config: Configuration): [number, number] {
  return [config.version, config.baseVersion ?? 0];
}

function before(a: [number, number], b: [number, number]): boolean {
  return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
}

export class ConfigurationClient extends EventEmitter {
  readonly serviceName: string;
  readonly environment: string;
  /** "daemon" once it answered; "cache" while serving the cache file only. */
  source: "none" | "cache" | "daemon" = "none";

  private readonly transport: Transport;
  private readonly wsUrl: string;
  private readonly options: Required<Pick<ClientOptions, "subscribeFlags" | "reconnectDelay" | "maxReconnectDelay" | "analyticsInterval">>;
  private readonly clock: () => number;
  private readonly cacheFile: string | undefined;
  private config: Configuration | null = null;
  private documents = new Map<string, FlagDocument>();
  private compiled = new Map<string, CompiledFlag>();
  private readonly lookup = (key: string) => this.compiled.get(key);
  private counts = new Map<string, number>();
  private ws: WebSocket | null = null;
  private connectedNow = false;
  private startPromise: Promise<void> | null = null;
  private closed = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private cacheWrite: Promise<void> = Promise.resolve();
  private cacheDirty = false;

  constructor(options: ClientOptions) {
    super();
    if (!options.serviceName || !options.environment) {
      throw new TypeError("serviceName and environment are required");
    }
    this.serviceName = options.serviceName;
    this.environment = options.environment;
    const base = options.socketPath ? "http://fpcd" : (options.apiUrl ?? "http://127.0.0.1:3001");
    const headers: Record<string, string> = {};
    if (options.token) headers.Authorization = `Bearer ${options.token}`;
    this.transport = {
      baseUrl: base.replace(/\/+$/, ""),
      socketPath: options.socketPath,
      headers,
      timeoutMs: options.requestTimeout ?? 10_000,
    };
    if (options.wsUrl) {
      this.wsUrl = options.wsUrl;
    } else if (options.socketPath) {
      this.wsUrl = `ws+unix://${options.socketPath}:/ws`;
    } else {
      this.wsUrl = this.transport.baseUrl.replace(/^http/, "ws") + "/ws";
    }
    this.options = {
      subscribeFlags: options.subscribeFlags ?? true,
      reconnectDelay: options.reconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 30_000,
      analyticsInterval: options.analyticsInterval ?? 10_000,
    };
    this.clock = options.now ?? Date.now;
    this.cacheFile = options.cacheFile;
  }

  // -- typed events -------------------------------------------------------------------------

  override on<E extends keyof ClientEvents>(event: E, listener: (...args: ClientEvents[E]) => void): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    return super.on(event, listener);
  }

  override once<E extends keyof ClientEvents>(event: E, listener: (...args: ClientEvents[E]) => void): this;
  override once(event: string | symbol, listener: (...args: any[]) => void): this;
  override once(event: string | symbol, listener: (...args: any[]) => void): this {
    return super.once(event, listener);
  }

  /** An `error` event only when someone listens: an unheard error must not crash the service. */
  private fail(error: Error): void {
    if (this.listenerCount("error") > 0) this.emit("error", error);
  }

  // -- lifecycle ------------------------------------------------------------------------------

  /**
   * Load the cache, fetch the current state, start the live subscription. Rejects with
   * FpcdUnavailable when the daemon cannot be reached and there is no cache file,
   * FpcdClientError when the daemon refuses (a bad token). Called by the first read.
   */
  start(): Promise<void> {
    if (this.closed) return Promise.reject(new Error("this client is closed"));
    if (!this.startPromise) {
      this.startPromise = this.doStart();
      this.startPromise.catch(() => {
        this.startPromise = null; // a later call may try again
      });
    }
    return this.startPromise;
  }

  private async doStart(): Promise<void> {
    if (this.cacheFile) await this.readCache();
    try {
      await this.fetchAll(false);
    } catch (error) {
      if (error instanceof FpcdClientError || this.source !== "cache") {
        if (error instanceof FpcdClientError) throw error;
        throw new FpcdUnavailable(
          `cannot reach fpcd at ${this.where} and no cache file to start from: ${(error as Error).message}`,
          { cause: error },
        );
      }
      // Serving the cache file until the daemon answers; the subscription keeps trying.
    }
    this.connect(this.options.reconnectDelay);
    if (this.options.analyticsInterval > 0) {
      this.flushTimer = setInterval(() => {
        this.flush().catch((error: Error) => this.fail(error));
      }, this.options.analyticsInterval);
      this.flushTimer.unref();
    }
  }

  /** Stop the subscription, send the last evaluation counts, save the cache. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.flushTimer) clearInterval(this.flushTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      await new Promise<void>((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve();
        ws.once("close", () => resolve());
        ws.terminate();
      });
    }
    if (this.startPromise) {
      await this.startPromise.catch(() => undefined);
      await this.flush().catch(() => 0);
    }
    await this.cacheWrite;
    this.setConnected(false);
  }

  private get where(): string {
    return this.transport.socketPath ? `unix socket ${this.transport.socketPath}` : this.transport.baseUrl;
  }

  // -- reading -------------------------------------------------------------------------------

  /** True while the live subscription is up; false means the values may be stale. */
  get connected(): boolean {
    return this.connectedNow;
  }

  /** The current configuration with its version; null before the first answer. */
  get configuration(): Configuration | null {
    return this.config;
  }

  /** Keys of the active (unarchived) flags known. */
  get flagKeys(): string[] {
    return [...this.compiled.keys()];
  }

  /** A copy of the current effective configuration (starts the client if needed). */
  async getConfiguration(): Promise<Record<string, unknown>> {
    await this.start();
    return this.config ? structuredClone(this.config.config) : {};
  }

  /**
   * Evaluate one flag locally, synchronously, with the daemon's rules and bucketing.
   * The context's environment defaults to the client's; `now` is epoch milliseconds.
   */
  evaluate(flagKey: string, context: EvaluationContext = {}, now?: number): EvaluationResult {
    checkContext(context);
    const instant = (now ?? this.clock()) / 1000;
    const result = evaluateFlag(this.compiled.get(flagKey) ?? flagKey, context, instant, this.lookup, this.environment);
    if (result.errorCode === undefined) this.count(result, instant);
    return result;
  }

  isEnabled(flagKey: string, context: EvaluationContext = {}): boolean {
    return this.evaluate(flagKey, context).enabled;
  }

  /**
   * The original's `evaluateFlags`: every active flag (or `flags`) for `context`, evaluated
   * locally at one instant, in the shape of `POST /api/features/evaluate`'s `results`.
   */
  async evaluateFlags(context: EvaluationContext = {}, flags?: string[]): Promise<Record<string, EvaluationResult>> {
    await this.start();
    return this.evaluateMany(context, flags);
  }

  /** `evaluateFlags` without starting: for callers that know the client is started. */
  evaluateMany(context: EvaluationContext = {}, flags?: string[], now?: number): Record<string, EvaluationResult> {
    checkContext(context);
    const instant = (now ?? this.clock()) / 1000;
    const results: Record<string, EvaluationResult> = {};
    for (const key of flags ?? this.compiled.keys()) {
      const result = evaluateFlag(this.compiled.get(key) ?? key, context, instant, this.lookup, this.environment);
      if (result.errorCode === undefined) this.count(result, instant);
      results[key] = result;
    }
    return results;
  }


  private count(result: EvaluationResult, instant: number): void {
    // One string per cell (flag keys and variant ids cannot hold a NUL): cheap to build.
    const hour = Math.floor(instant / 3600);
    const cell = `${result.flagKey}\u0000${hour}\u0000${result.variant ?? ""}\u0000${result.enabled}\u0000${result.reason}`;
    this.counts.set(cell, (this.counts.get(cell) ?? 0) + 1);
  }

  /** Send the evaluation counts gathered so far; on failure they are kept for next time. */
  async flush(): Promise<number> {
    if (this.counts.size === 0 || this.startPromise === null) return 0;
    const counts = this.counts;
    this.counts = new Map();
    const cells = [...counts.entries()];
    let sent = 0;
    try {
      for (let i = 0; i < cells.length; i += COUNTS_PER_REQUEST) {
        const chunk = cells.slice(i, i + COUNTS_PER_REQUEST);
        const body = {
          counts: chunk.map(([cell, count]) => {
            const [flag, hour, variant, enabled, reason] = cell.split("\u0000");
            return { flag, variant: variant || null, enabled: enabled === "true", reason, hour: Number(hour), count };
          }),
        };
        const response = await request(this.transport, "POST", "/api/features/evaluations", body);
        if (response.status >= 400) throw new FpcdClientError(response.status, detailOf(response.body));
        for (const [cell, count] of chunk) {
          counts.delete(cell);
          sent += count;
        }
      }
    } catch (error) {
      this.restore(counts);
      throw error;
    }
    return sent;
  }

  private restore(counts: Map<string, number>): void {
    if (this.counts.size + counts.size > MAX_PENDING_CELLS) return; // dropped: the daemon is away too long
    for (const [cell, n] of counts) this.counts.set(cell, (this.counts.get(cell) ?? 0) + n);
  }

  // -- state changes -------------------------------------------------------------------------

  private setConfig(config: Configuration, force: boolean, announce = true): void {
    const current = this.config;
    if (current) {
      if (force) {
        const same = position(config).join() === position(current).join() && config.checksum === current.checksum;
        if (same) return;
      } else if (!before(position(current), position(config))) {
        return;
      }
    }
    this.config = config;
    this.saveSoon();
    if (announce) this.emit("configurationUpdate", structuredClone(config.config), config);
  }

  /** Take every document newer than what is held; announce the changed keys. */
  private takeFlags(docs: FlagDocument[], announce: boolean): void {
    const changed: string[] = [];
    for (const doc of docs) {
      if (!doc || typeof doc.key !== "string") continue;
      const held = this.documents.get(doc.key);
      if ((doc.version ?? 0) <= (held?.version ?? 0)) continue;
      this.documents.set(doc.key, doc);
      changed.push(doc.key);
      let flag: CompiledFlag | null = null;
      try {
        flag = compileFlag(doc);
      } catch (error) {
        this.fail(new Error(`flag ${doc.key} not understood: ${(error as Error).message}`));
      }
      if (flag) this.compiled.set(doc.key, flag);
      else this.compiled.delete(doc.key);
    }
    if (changed.length) this.saveSoon();
    if (announce) {
      const now = this.clock() / 1000;
      for (const key of changed) {
        const doc = this.documents.get(key) ?? null;
        const archived = !doc || Boolean(doc.archived);
        const enabled = active(this.compiled.get(key), this.environment, now, this.lookup);
        this.emit("featureFlagUpdate", key, enabled, archived ? null : doc, archived ? "archived" : "changed");
      }
    }
  }

  private setConnected(connected: boolean): void {
    if (connected !== this.connectedNow) {
      this.connectedNow = connected;
      this.emit(connected ? "connected" : "disconnected");
    }
  }

  // -- talking to the daemon ------------------------------------------------------------------

  private async get(path: string): Promise<{ status: number; body: unknown }> {
    const response = await request(this.transport, "GET", path);
    if (response.status >= 400 && response.status !== 404) {
      throw new FpcdClientError(response.status, detailOf(response.body));
    }
    return response;
  }

  private async fetchAll(announce: boolean): Promise<void> {
    const service = encodeURIComponent(this.serviceName);
    const env = encodeURIComponent(this.environment);
    const { status, body } = await this.get(`/api/config/${service}?environment=${env}`);
    const config: Configuration =
      status === 404
        ? { serviceName: this.serviceName, environment: this.environment, version: 0, config: {} }
        : (body as Configuration);
    this.setConfig(config, true, announce);
    if (this.options.subscribeFlags) await this.fetchFlags(announce);
    this.source = "daemon";
  }

  private async fetchFlags(announce: boolean): Promise<void> {
    const { status, body } = await this.get("/api/features?includeArchived=true");
    if (status === 404) throw new FpcdClientError(404, "no flag API at this address");
    this.takeFlags((body as { items: FlagDocument[] }).items, announce);
  }

  private connect(delay: number): void {
    if (this.closed) return;
    const topics = this.options.subscribeFlags ? ["config-updates", "feature-flags"] : ["config-updates"];
    const ws = new WebSocket(this.wsUrl, { headers: this.transport.headers, handshakeTimeout: this.transport.timeoutMs });
    this.ws = ws;
    let confirmed = false;
    ws.on("open", () => {
      ws.send(
        JSON.stringify({
          type: "SUBSCRIBE",
          serviceName: this.serviceName,
          environment: this.environment,
          subscriptions: topics,
          lastVersion: this.config ? this.config.version : 0,
        }),
      );
    });
    // Messages apply in order: a SUBSCRIBED re-fetches the flags before what follows applies.
    let queue: Promise<void> = Promise.resolve();
    ws.on("message", (data) => {
      queue = queue.then(async () => {
        try {
          if (await this.onMessage(String(data))) confirmed = true;
        } catch (error) {
          this.fail(error as Error);
          if (error instanceof FpcdClientError) ws.close();
        }
      });
    });
    ws.on("error", (error) => this.fail(error));
    ws.on("close", () => {
      if (this.ws === ws) this.ws = null;
      this.setConnected(false);
      if (this.closed) return;
      const next = confirmed ? this.options.reconnectDelay : Math.min(delay * 2, this.options.maxReconnectDelay);
      const wait = (confirmed ? this.options.reconnectDelay : delay) * (0.5 + Math.random());
      this.reconnectTimer = setTimeout(() => this.connect(next), wait);
      this.reconnectTimer.unref();
    });
  }

  /** Apply one server message; true once the subscription is confirmed. */
  private async onMessage(text: string): Promise<boolean> {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return false;
    }
    if (!message || typeof message !== "object") return false;
    const ours = message.serviceName === this.serviceName && message.environment === this.environment;
    switch (message.type) {
      case "CONFIGURATION_UPDATE":
        if (ours) this.setConfig(message as unknown as Configuration, false);
        return false;
      case "FEATURE_FLAG_UPDATE": {
        const key = message.flagKey;
        if (typeof key !== "string") return false;
        const doc = message.flag as FlagDocument | null;
        if (doc && typeof doc === "object") this.takeFlags([doc], false);
        const held = this.documents.get(key);
        const archived = !doc || Boolean(held?.archived);
        this.emit("featureFlagUpdate", key, Boolean(message.enabled), archived ? null : (held ?? null), String(message.reason ?? "changed"));
        return false;
      }
      case "CONFIGURATION_RELOAD":
        if (ours) this.emit("configurationReload", { version: Number(message.version), force: Boolean(message.force) });
        return false;
      case "SUBSCRIBED":
        if (!ours) return false;
        // Flags have no replay: fetch them all; live messages queued behind apply on top.
        if (this.options.subscribeFlags) await this.fetchFlags(true);
        this.source = "daemon";
        this.setConnected(true);
        return true;
      case "ERROR": {
        const code = String(message.code);
        const error = new FpcdClientError(code === "UNAUTHENTICATED" ? 401 : 403, `${code}: ${String(message.message)}`);
        if (code === "UNAUTHENTICATED" || code === "FORBIDDEN") throw error;
        this.fail(error);
        return false;
      }
      default:
        return false;
    }
  }

  // -- cache file ------------------------------------------------------------------------------

  private async readCache(): Promise<void> {
    let cache: CacheFile;
    try {
      cache = JSON.parse(await fs.readFile(this.cacheFile as string, "utf8")) as CacheFile;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
        this.fail(new Error(`cache file ${this.cacheFile} not usable: ${(error as Error).message}`));
      }
      return;
    }
    if (cache.format !== 1 || cache.serviceName !== this.serviceName || cache.environment !== this.environment) {
      return;
    }
    if (cache.configuration) this.config = cache.configuration;
    this.takeFlags(Array.isArray(cache.flags) ? cache.flags : [], false);
    this.source = "cache";
  }

  /** Write the cache after this change; changes in the meantime coalesce into one write. */
  private saveSoon(): void {
    if (!this.cacheFile || this.cacheDirty) return;
    this.cacheDirty = true;
    this.cacheWrite = this.cacheWrite.then(async () => {
      this.cacheDirty = false;
      const cache: CacheFile = {
        format: 1,
        serviceName: this.serviceName,
        environment: this.environment,
        savedAt: this.clock() / 1000,
        configuration: this.config,
        flags: [...this.documents.values()],
      };
      try {
        await atomicWrite(this.cacheFile as string, JSON.stringify(cache));
      } catch (error) {
        this.fail(new Error(`cache file not written: ${(error as Error).message}`));
      }
    });
  }
}

/** Temp file, fsync, rename, directory fsync: a reader sees the old file or the new one. */
async function atomicWrite(target: string, text: string): Promise<void> {
  const dir = path.dirname(target);
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.tmp`);
  const handle = await fs.open(temp, "w", 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(temp, target);
  const dirHandle = await fs.open(dir, "r");
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}
