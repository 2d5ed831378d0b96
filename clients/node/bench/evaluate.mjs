// Local flag evaluation in the Node client, beside OFREP over HTTP and GrowthBook's JS SDK
// evaluating the equivalent flag locally, in the same run. Starts its own daemon.
//
//   cd clients/node && npm ci && npm run build && node bench/evaluate.mjs
//
// Writes benchmarks/results/node_client.{json,md} (with the commit measured).
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import * as os from "node:os";
import { fileURLToPath } from "node:url";

import { GrowthBook } from "@growthbook/growthbook";
import { OFREPProvider } from "@openfeature/ofrep-provider";
import { OpenFeature } from "@openfeature/server-sdk";

import { ConfigurationClient, compileFlag, evaluate } from "../dist/esm/index.js";
import { Daemon } from "../test/daemon.mjs";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
// The flag of benchmarks/flags.py: 50% rollout, groups, region, an `in` rule, two variants.
const CHECKOUT = {
  name: "checkout",
  enabled: true,
  rollout: { percentage: 50, userGroups: ["beta", "staff"], regions: ["eu"] },
  rules: [{ attribute: "plan", operator: "in", values: ["pro", "team"] }],
  variants: [
    { id: "control", weight: 50, configuration: { steps: 3 } },
    { id: "onepage", weight: 50, configuration: { steps: 1 } },
  ],
};
const USERS = Array.from({ length: 100_000 }, (_, i) => `user-${i}`);

/** Median over `rounds` of the mean µs per call of `fn(user)` over every user. */
function perCall(fn, users = USERS, rounds = 5) {
  const runs = [];
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    for (const user of users) fn(user);
    runs.push(Number(process.hrtime.bigint() - start) / 1000 / users.length);
  }
  runs.sort((a, b) => a - b);
  return Number(runs[Math.floor(runs.length / 2)].toFixed(3));
}

function percentile(sorted, p) {
  return Number(sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))].toFixed(1));
}

const daemon = await new Daemon().start();
const results = {};
try {
  await daemon.api("PUT", "/api/features/checkout", CHECKOUT);

  // The engine alone (the floor), then the client's isEnabled (context check, counting).
  const flag = compileFlag({ ...CHECKOUT, key: "checkout", version: 1 });
  const table = new Map([["checkout", flag]]);
  const lookup = (key) => table.get(key);
  const now = Date.now() / 1000;
  results.engine_us = perCall((user) =>
    evaluate(flag, { userId: user, userGroup: "beta", region: "eu", customAttributes: { plan: "pro" }, environment: "production" }, now, lookup),
  );

  const client = new ConfigurationClient({ apiUrl: daemon.url, serviceName: "bench", environment: "production", token: daemon.token, analyticsInterval: 0 });
  await client.start();
  results.is_enabled_us = perCall((user) =>
    client.isEnabled("checkout", { userId: user, userGroup: "beta", region: "eu", customAttributes: { plan: "pro" } }),
  );
  results.evaluate_us = perCall((user) =>
    client.evaluate("checkout", { userId: user, userGroup: "beta", region: "eu", customAttributes: { plan: "pro" } }),
  );
  results.enabled_share = USERS.filter((user) => client.isEnabled("checkout", { userId: user, userGroup: "beta", region: "eu", customAttributes: { plan: "pro" } })).length / USERS.length;
  await client.close();

  // GrowthBook's JS SDK, the same targeting and split, evaluated locally.
  const gb = new GrowthBook({
    features: {
      checkout: {
        defaultValue: null,
        rules: [
          {
            condition: { userGroup: { $in: ["beta", "staff"] }, region: "eu", plan: { $in: ["pro", "team"] } },
            coverage: 0.5,
            hashAttribute: "id",
            key: "checkout",
            variations: [{ steps: 3 }, { steps: 1 }],
            weights: [0.5, 0.5],
          },
        ],
      },
    },
  });
  results.growthbook_us = perCall((user) => {
    gb.setAttributes({ id: user, userGroup: "beta", region: "eu", plan: "pro" });
    return gb.evalFeature("checkout");
  });

  // OFREP over HTTP, one evaluation per round trip (the provider's own requests).
  await OpenFeature.setProviderAndWait(
    new OFREPProvider({ baseUrl: daemon.url, headers: [["Authorization", `Bearer ${daemon.token}`]] }),
  );
  const of = OpenFeature.getClient();
  const times = [];
  for (const user of USERS.slice(0, 2000)) {
    const start = process.hrtime.bigint();
    await of.getObjectValue("checkout", {}, { targetingKey: user, userGroup: "beta", region: "eu", plan: "pro" });
    times.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  times.sort((a, b) => a - b);
  results.ofrep_p50_us = percentile(times, 50);
  results.ofrep_p99_us = percentile(times, 99);
  await OpenFeature.close();
} finally {
  await daemon.destroy();
}

const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
const when = new Date().toISOString().replace("T", " ").slice(0, 19) + " UTC";
const record = { date: when, commit, node: process.version, cpus: os.cpus().length, ...results };
writeFileSync(`${ROOT}/benchmarks/results/node_client.json`, JSON.stringify(record, null, 2) + "\n");
const x = (us) => `${(us / results.is_enabled_us).toFixed(0)}x`;
const md = `# Node.js client: local evaluation beside OFREP over HTTP and GrowthBook's JS SDK

\`cd clients/node && node bench/evaluate.mjs\` on ${when}, commit ${commit}, ${record.cpus} CPUs, Node ${process.version}.

| per flag lookup | time | vs isEnabled |
|---|---|---|
| engine alone (\`evaluate\` on a compiled flag, the floor) | ${results.engine_us} µs | |
| \`ConfigurationClient.isEnabled\` | ${results.is_enabled_us} µs | 1x |
| \`ConfigurationClient.evaluate\` (full result) | ${results.evaluate_us} µs | |
| GrowthBook JS SDK, local (same targeting and split) | ${results.growthbook_us} µs | ${x(results.growthbook_us)} |
| \`@openfeature/ofrep-provider\` over HTTP, one at a time | p50 ${results.ofrep_p50_us} µs, p99 ${results.ofrep_p99_us} µs | ${x(results.ofrep_p50_us)} |

The flag of benchmarks/flags.py (50% rollout, user groups, region, an \`in\` rule on a custom
attribute, two weighted variants); ${(results.enabled_share * 100).toFixed(1)}% of the 100,000 users are on.
\`isEnabled\` includes the context check and the evaluation count that feeds the daemon's
analytics. Target: a local evaluation under 2 µs.
`;
writeFileSync(`${ROOT}/benchmarks/results/node_client.md`, md);
console.log(md);
