// The shared vector file (tests/fixtures/flag_vectors.json, generated from the Python
// engine) evaluated by this package's engine: every answer must be the daemon's.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { bucket, compileFlag, evaluate, parseInstant, variantSlot } from "../dist/esm/index.js";

const file = fileURLToPath(new URL("../../../tests/fixtures/flag_vectors.json", import.meta.url));
const vectors = JSON.parse(readFileSync(file, "utf8"));
const CASES = Object.keys(vectors).find((key) => key.startsWith("cases"));

test("the daemon's published bucketing vectors (docs/flags.md)", () => {
  const docs = readFileSync(fileURLToPath(new URL("../../../docs/flags.md", import.meta.url)), "utf8");
  const rows = [...docs.matchAll(/^\| `([^`]+)` \| (?:`([^`]*)`|\(empty\)) \| (\d+) \| (\d+) \|$/gm)];
  assert.ok(rows.length >= 5, "the table of vectors in docs/flags.md");
  for (const [, key, id = "", rollout, variant] of rows) {
    assert.equal(bucket(key, id), Number(rollout), `${key}:${id}`);
    assert.equal(variantSlot(key, id, 100000), Number(variant), `${key}:variant:${id}`);
  }
});

test("every vector evaluates as the Python engine does", () => {
  const compiled = new Map();
  for (const doc of vectors.flags) {
    const flag = compileFlag(doc);
    if (flag) compiled.set(doc.key, flag);
  }
  const lookup = (key) => compiled.get(key);
  const failures = [];
  for (const [key, index, expected] of vectors[CASES]) {
    // A context without an environment takes the client's (as ConfigurationClient passes it).
    const context = vectors.contexts[index];
    const actual = evaluate(compiled.get(key) ?? key, context, vectors.now, lookup, vectors.defaultEnvironment);
    try {
      assert.deepStrictEqual(actual, expected);
    } catch {
      failures.push({ key, context: vectors.contexts[index], expected, actual });
    }
  }
  assert.equal(vectors[CASES].length > 3000, true);
  assert.deepStrictEqual(failures.slice(0, 5), [], `${failures.length} vectors differ`);
});

test("ISO 8601 instants parse as Python's datetime.fromisoformat reads them", () => {
  for (const { text, expected } of vectors.instants) {
    const actual = parseInstant(text);
    if (expected === null) assert.equal(actual, null, text);
    else assert.ok(actual !== null && Math.abs(actual - expected) < 1e-6, `${text}: ${actual} != ${expected}`);
  }
});
