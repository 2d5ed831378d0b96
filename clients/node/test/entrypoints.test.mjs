// Both module systems load the package by its name, and the declarations describe it.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function run(args) {
  return execFileSync(process.execPath, args, { cwd: ROOT, encoding: "utf8" }).trim();
}

test("require('@fpcd/client') gives the CommonJS build", () => {
  const out = run(["-e", "const c = require('@fpcd/client'); console.log(typeof c.ConfigurationClient, c.bucket('new_checkout_flow', 'user-1'), require.resolve('@fpcd/client'))"]);
  assert.match(out, /^function 34510 .*dist\/cjs\/index\.js$/);
  const of = run(["-e", "console.log(typeof require('@fpcd/client/openfeature').FpcdProvider)"]);
  assert.equal(of, "function");
});

test("import '@fpcd/client' gives the ES module build", () => {
  const out = run(["--input-type=module", "-e", "import { ConfigurationClient, bucket } from '@fpcd/client'; console.log(typeof ConfigurationClient, bucket('new_checkout_flow', 'user-1'), import.meta.resolve('@fpcd/client'))"]);
  assert.match(out, /^function 34510 .*dist\/esm\/index\.js$/);
});

test("type declarations ship for every entry point", () => {
  const pkg = JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8"));
  for (const entry of Object.values(pkg.exports)) {
    if (typeof entry === "string") continue;
    assert.ok(existsSync(`${ROOT}/${entry.types}`), entry.types);
  }
  const types = readFileSync(`${ROOT}/dist/types/client.d.ts`, "utf8");
  assert.match(types, /getConfiguration\(\): Promise<Record<string, unknown>>/);
  assert.match(types, /evaluateFlags\(context\?: EvaluationContext, flags\?: string\[\]\): Promise<Record<string, EvaluationResult>>/);
});

test("the original's documented calls type-check against the declarations", () => {
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  // Throws (with tsc's diagnostics) if a call or a callback's arguments do not fit.
  execFileSync(process.execPath, [tsc, "-p", "test/types/tsconfig.json"], { cwd: ROOT, encoding: "utf8" });
});
