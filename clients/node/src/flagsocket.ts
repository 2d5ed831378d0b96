/**
 * FlagSocketClient: flag lookups on the daemon's `flags.sock` (newline-delimited JSON,
 * pipelined, answered in order; no token, no HTTP) for services on the same host.
 */

import * as net from "node:net";

import type { EvaluationContext, EvaluationResult } from "./flags.js";

export class FlagSocketError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = "FlagSocketError";
  }
}

interface Pending {
  resolve: (value: Record<string, unknown>) => void;
  reject: (error: Error) => void;
}

export class FlagSocketClient {
  private socket: net.Socket | null = null;
  private connecting: Promise<net.Socket> | null = null;
  private buffer = "";
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  /** `path`: the daemon's flags.sock (in its runtime dir). */
  constructor(
    readonly path: string,
    private readonly timeoutMs = 5_000,
  ) {}

  private connect(): Promise<net.Socket> {
    if (this.socket) return Promise.resolve(this.socket);
    if (!this.connecting) {
      this.connecting = new Promise((resolve, reject) => {
        const socket = net.createConnection(this.path);
        socket.setEncoding("utf8");
        socket.once("connect", () => {
          this.socket = socket;
          this.connecting = null;
          resolve(socket);
        });
        socket.once("error", (error) => {
          this.connecting = null;
          reject(error);
        });
        socket.on("data", (chunk: string) => this.onData(chunk));
        socket.on("close", () => {
          this.socket = null;
          const error = new Error("flag socket closed");
          for (const waiter of this.pending.values()) waiter.reject(error);
          this.pending.clear();
        });
      });
    }
    return this.connecting;
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline = this.buffer.indexOf("\n");
    while (newline >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      newline = this.buffer.indexOf("\n");
      let reply: Record<string, unknown>;
      try {
        reply = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      const waiter = this.pending.get(reply.id as number);
      if (!waiter) continue;
      this.pending.delete(reply.id as number);
      const error = reply.error as { code: string; message: string } | undefined;
      if (error) waiter.reject(new FlagSocketError(error.code, error.message));
      else waiter.resolve(reply);
    }
  }

  private async ask(request: Record<string, unknown>): Promise<Record<string, unknown>> {
    const socket = await this.connect();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer on ${this.path} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      socket.write(JSON.stringify({ id, ...request }) + "\n");
    });
  }

  /** One flag's evaluation, by the daemon. */
  async evaluate(flag: string, context: EvaluationContext = {}): Promise<EvaluationResult> {
    return (await this.ask({ flag, context })).result as EvaluationResult;
  }

  /** Several flags at once. */
  async evaluateMany(flags: string[], context: EvaluationContext = {}): Promise<Record<string, EvaluationResult>> {
    return (await this.ask({ flags, context })).results as Record<string, EvaluationResult>;
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }
}
