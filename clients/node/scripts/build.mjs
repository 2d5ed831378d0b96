// Builds both entry points: ESM (dist/esm) with declarations (dist/types), and CommonJS (dist/cjs).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const tsc = require.resolve("typescript/bin/tsc");
rmSync("dist", { recursive: true, force: true });
// Each output tree says which module system its .js files use.
for (const [dir, type] of [["dist/esm", "module"], ["dist/cjs", "commonjs"]]) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}/package.json`, JSON.stringify({ type }) + "\n");
}
execFileSync(process.execPath, [tsc, "-p", "tsconfig.esm.json"], { stdio: "inherit" });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.cjs.json"], { stdio: "inherit" });
