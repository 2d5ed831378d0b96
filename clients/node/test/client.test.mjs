// ConfigurationClient against a real daemon: the original's API, live updates, replay
// after a lost connection, the cache file, timeouts, evaluation counts.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { ConfigurationClient, FlagSocketClient, FpcdUnavailable } from "../dist/esm/index.js";
import { Daemon, freePort, until } from "./daemon.mjs";

let daemon;
before(async () => {
  daemon = await new Daemon().start();
});
after(async () => {
  await daemon?.destroy();
});

/** Resolves with the arguments of the next `event` whose arguments pass `accept`. */
function next(emitter, event, accept = () => true) {
  return new Promise((resolve) => {
    const listener = (...args) => {
      if (accept(...args)) {
        emitter.off(event, listener);
        resolve(args);
      }
    };
    emitter.on(event, listener);
  });
}

test("the original's API, verbatim: getConfiguration, evaluateFlags, both events", async () => {
  await daemon.api("PUT", "/api/config/user-service", { environment: "default", config: { db: { pool: 5 }, maxUsers: 10 } });
  await daemon.api("PUT", "/api/config/user-service", { environment: "production", config: { maxUsers: 100 } });
  await daemon.api("POST", "/api/features", {
    name: "Premium Dashboard",
    enabled: true,
    rollout: { percentage: 50, userGroups: ["premium"] },
    variants: [
      { id: "classic", weight: 50, configuration: { theme: "classic" } },
      { id: "modern", weight: 50, configuration: { theme: "modern" } },
    ],
  });
  const client = new ConfigurationClient({
    apiUrl: daemon.url,
    wsUrl: daemon.wsUrl,
    serviceName: "user-service",
    environment: "production",
    token: daemon.token,
  });
  try {
    const config = await client.getConfiguration();
    assert.deepEqual(config, { db: { pool: 5 }, maxUsers: 100 });

    // Local evaluation gives exactly the daemon's answer, for many users.
    for (const userId of ["user-123", "user-124", "ユーザー", "u-42", "émile"]) {
      const context = { userId, userGroup: "premium" };
      const local = await client.evaluateFlags(context);
      const [status, remote] = await daemon.api("POST", "/api/features/evaluate", { context: { ...context, environment: "production" } });
      assert.equal(status, 200);
      assert.deepEqual(local, remote.results, userId);
      assert.deepEqual(Object.keys(local.premium_dashboard).sort(), Object.keys(remote.results.premium_dashboard).sort());
    }
    assert.equal(client.isEnabled("premium_dashboard", { userId: "user-123", userGroup: "basic" }), false);
    assert.equal(client.evaluate("premium_dashboard", { userId: "user-123", userGroup: "basic" }).reason, "DEFAULT");

    await until(() => client.connected, "the subscription");
    const configEvent = next(client, "configurationUpdate", (cfg) => cfg.maxUsers === 200);
    await daemon.api("PUT", "/api/config/user-service", { environment: "production", config: { maxUsers: 200 } });
    const [newConfig] = await configEvent;
    assert.deepEqual(newConfig, { db: { pool: 5 }, maxUsers: 200 });

    const flagEvent = next(client, "featureFlagUpdate", (key) => key === "premium_dashboard");
    await daemon.api("PATCH", "/api/features/premium_dashboard", { enabled: false });
    const [flagKey, enabled] = await flagEvent;
    assert.deepEqual([flagKey, enabled], ["premium_dashboard", false]);
    assert.equal(client.isEnabled("premium_dashboard", { userId: "user-123", userGroup: "premium" }), false);

    const reload = next(client, "configurationReload");
    await daemon.api("POST", "/api/config/user-service/reload", { environment: "production", force: true });
    const [event] = await reload;
    assert.equal(event.force, true);
  } finally {
    await client.close();
  }
});

/** A TCP proxy to the WebSocket port that the test can cut and restore. */
async function proxy(targetPort) {
  const sockets = new Set();
  let open = true;
  const server = net.createServer((socket) => {
    if (!open) return socket.destroy();
    const upstream = net.createConnection(targetPort, "127.0.0.1");
    for (const s of [socket, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => sockets.delete(s));
    }
    socket.pipe(upstream).pipe(socket);
    socket.on("close", () => upstream.destroy());
    upstream.on("close", () => socket.destroy());
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    port,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

test("a change made while the connection is down is replayed from lastVersion", async () => {
  await daemon.api("PUT", "/api/config/replay-svc", { environment: "production", config: { n: 1 } });
  const relay = await proxy(daemon.wsPort);
  const client = new ConfigurationClient({
    apiUrl: daemon.url,
    wsUrl: `ws://127.0.0.1:${relay.port}`,
    serviceName: "replay-svc",
    environment: "production",
    token: daemon.token,
    reconnectDelay: 50,
    maxReconnectDelay: 200,
    subscribeFlags: false,
  });
  try {
    await client.start();
    await until(() => client.connected, "the subscription");
    const seen = [];
    client.on("configurationUpdate", (cfg) => seen.push(cfg.n));
    relay.cut();
    await until(() => !client.connected, "the disconnect");
    // Written while the client cannot hear: only a replay can bring it.
    await daemon.api("PUT", "/api/config/replay-svc", { environment: "production", config: { n: 2 } });
    await daemon.api("PUT", "/api/config/replay-svc", { environment: "production", config: { n: 3 } });
    relay.restore();
    await until(() => client.configuration?.version === 3, "the replayed versions");
    assert.deepEqual(seen.at(-1), 3);
    assert.deepEqual(await client.getConfiguration(), { n: 3 });
  } finally {
    await client.close();
    await relay.close();
  }
});

test("the cache file lets a service start while fpcd is down", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "fpcd-cache-"));
  const cacheFile = path.join(dir, "cache.json");
  const own = await new Daemon().start();
  await own.api("PUT", "/api/config/cached", { environment: "production", config: { answer: 42 } });
  await own.api("POST", "/api/features", { name: "cached flag", enabled: true });
  const options = { apiUrl: own.url, wsUrl: own.wsUrl, serviceName: "cached", environment: "production", token: own.token, cacheFile };
  const first = new ConfigurationClient(options);
  await first.start();
  await first.close();
  await own.destroy();

  const offline = new ConfigurationClient({ ...options, reconnectDelay: 60_000 });
  try {
    assert.deepEqual(await offline.getConfiguration(), { answer: 42 });
    assert.equal(offline.source, "cache");
    assert.equal(offline.isEnabled("cached_flag", { userId: "u" }), true);
  } finally {
    await offline.close();
  }
  const noCache = new ConfigurationClient({ ...options, cacheFile: path.join(dir, "missing.json") });
  await assert.rejects(noCache.start(), FpcdUnavailable);
  await noCache.close();
});

test("a daemon that never answers fails the request after the timeout", async () => {
  const silent = net.createServer(() => undefined); // accepts, never answers
  const port = await freePort();
  await new Promise((resolve) => silent.listen(port, "127.0.0.1", resolve));
  const client = new ConfigurationClient({ apiUrl: `http://127.0.0.1:${port}`, serviceName: "s", environment: "production", requestTimeout: 200 });
  try {
    await assert.rejects(client.start(), (error) => error instanceof FpcdUnavailable && /within 200 ms/.test(error.message));
  } finally {
    await client.close();
    silent.close();
    silent.unref();
  }
});

test("a bad token is refused, not retried silently", async () => {
  const client = new ConfigurationClient({ apiUrl: daemon.url, serviceName: "s", environment: "production", token: "not-a-token" });
  await assert.rejects(client.start(), (error) => error.status === 401);
  await client.close();
});

test("local evaluations are counted back to the daemon's analytics", async () => {
  await daemon.api("PUT", "/api/features/counted", { name: "counted", enabled: true });
  const client = new ConfigurationClient({ apiUrl: daemon.url, serviceName: "s", environment: "production", token: daemon.token, analyticsInterval: 0 });
  await client.start();
  for (let i = 0; i < 25; i++) client.isEnabled("counted", { userId: `u-${i}` });
  await client.close(); // sends the counts
  const [status, report] = await daemon.api("GET", "/api/features/counted/analytics?startDate=2000-01-01&endDate=2100-01-01");
  assert.equal(status, 200);
  assert.equal(report.total, 25, JSON.stringify(report));
});

test("the flag socket answers as the local engine does", async () => {
  await daemon.api("PUT", "/api/features/sock_flag", { name: "sock", enabled: true, rollout: { percentage: 40 } });
  const client = new ConfigurationClient({ apiUrl: daemon.url, serviceName: "s", environment: "production", token: daemon.token });
  const socket = new FlagSocketClient(daemon.flagSocket);
  try {
    await client.start();
    await until(() => client.flagKeys.includes("sock_flag"), "the flag");
    for (const userId of ["a", "b", "c", "d", "ü"]) {
      const context = { userId, environment: "production" };
      assert.deepEqual(await socket.evaluate("sock_flag", context), client.evaluate("sock_flag", context));
    }
    const many = await socket.evaluateMany(["sock_flag", "nope"], { userId: "a" });
    assert.equal(many.nope.errorCode, "FLAG_NOT_FOUND");
  } finally {
    socket.close();
    await client.close();
  }
});

test("no token when the daemon grants anonymous access (auth.anonymous_role)", async () => {
  const open = await new Daemon({ env: { FPCD_AUTH__ANONYMOUS_ROLE: "viewer" } }).start();
  try {
    await open.api("PUT", "/api/config/user-service", { environment: "production", config: { maxUsers: 5 } });
    await open.api("PUT", "/api/features/anon_flag", { name: "anon", enabled: true });
    const client = new ConfigurationClient({ apiUrl: open.url, wsUrl: open.wsUrl, serviceName: "user-service", environment: "production" });
    try {
      assert.deepEqual(await client.getConfiguration(), { maxUsers: 5 });
      assert.equal(client.isEnabled("anon_flag", { userId: "u" }), true);
      await until(() => client.connected, "the subscription without a token");
      const update = next(client, "configurationUpdate", (cfg) => cfg.maxUsers === 6);
      await open.api("PUT", "/api/config/user-service", { environment: "production", config: { maxUsers: 6 } });
      await update;
    } finally {
      await client.close();
    }
  } finally {
    await open.destroy();
  }
});
