// A real fpcd daemon for the tests: `python -m fpcd serve` on free loopback ports, in a
// temp data dir, as a user would run it. FPCD_PYTHON names the interpreter (the test
// command of the repository sets it); else the repository's .venv, else python3.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

export function python() {
  if (process.env.FPCD_PYTHON) return process.env.FPCD_PYTHON;
  const venv = path.join(ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Wait for `check()` to return a truthy value (polling), or fail with `what`. */
export async function until(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export class Daemon {
  constructor({ env = {}, dataDir } = {}) {
    this.dataDir = dataDir ?? mkdtempSync(path.join(tmpdir(), "fpcd-node-"));
    this.env = env;
    this.proc = null;
    this.output = "";
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}`;
  }

  get token() {
    return readFileSync(path.join(this.dataDir, "admin.token"), "utf8").trim();
  }

  get apiSocket() {
    return path.join(this.dataDir, "fpcd.sock");
  }

  get flagSocket() {
    return path.join(this.dataDir, "flags.sock");
  }

  async start() {
    this.port ??= await freePort();
    this.wsPort ??= await freePort();
    const args = ["-m", "fpcd", "serve", "--data-dir", this.dataDir, "--api-port", String(this.port), "--ws-port", String(this.wsPort)];
    this.proc = spawn(python(), args, { cwd: ROOT, env: { ...process.env, ...this.env }, stdio: ["ignore", "pipe", "pipe"] });
    const proc = this.proc;
    proc.stdout.on("data", (chunk) => (this.output += chunk));
    proc.stderr.on("data", (chunk) => (this.output += chunk));
    await until(async () => {
      if (proc.exitCode !== null) throw new Error(`fpcd exited with ${proc.exitCode}:\n${this.output}`);
      try {
        const response = await fetch(`${this.url}/health/ready`);
        return response.status === 200;
      } catch {
        return false;
      }
    }, "fpcd to be ready", 30_000);
    return this;
  }

  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGTERM");
    await exited;
  }

  async destroy() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A REST call with the admin token; returns [status, body]. */
  async api(method, route, body, headers = {}) {
    const response = await fetch(this.url + route, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return [response.status, text ? JSON.parse(text) : null];
  }
}
