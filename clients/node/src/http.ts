/** A small JSON-over-HTTP helper on node:http: TCP or the daemon's Unix socket, with a timeout. */

import * as http from "node:http";
import * as https from "node:https";

export class FpcdClientError extends Error {
  /** The daemon refused a request (a bad token, a missing permission, a bad body...). */
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`fpcd answered ${status}: ${detail}`);
    this.name = "FpcdClientError";
  }
}

export class FpcdUnavailable extends Error {
  /** Neither the daemon nor a cache file could provide what was asked. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FpcdUnavailable";
  }
}

export interface Transport {
  /** `http://host:port` (ignored for the host part when `socketPath` is set). */
  baseUrl: string;
  socketPath?: string;
  headers: Record<string, string>;
  timeoutMs: number;
}

export interface JsonResponse {
  status: number;
  body: unknown;
  headers: http.IncomingHttpHeaders;
}

/** Bodies above this are refused: a configuration or flag list is far smaller. */
const MAX_BODY = 64 * 1024 * 1024;

export function request(
  transport: Transport,
  method: string,
  path: string,
  body?: unknown,
): Promise<JsonResponse> {
  const url = new URL(path, transport.baseUrl);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: Record<string, string> = { Accept: "application/json", ...transport.headers };
  if (payload) {
    headers["Content-Type"] = "application/json";
    headers["Content-Length"] = String(payload.length);
  }
  const lib = url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(
      {
        method,
        headers,
        socketPath: transport.socketPath,
        hostname: transport.socketPath ? undefined : url.hostname,
        port: transport.socketPath ? undefined : url.port,
        path: url.pathname + url.search,
        timeout: transport.timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_BODY) {
            req.destroy(new Error(`fpcd answer larger than ${MAX_BODY} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = null;
          if (text) {
            try {
              parsed = JSON.parse(text);
            } catch {
              parsed = text;
            }
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
        });
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`fpcd did not answer within ${transport.timeoutMs} ms`)));
    req.on("error", reject);
    if (payload) req.write(payload);
    req.end();
  });
}

/** The problem document's detail, for an error message. */
export function detailOf(body: unknown): string {
  if (body && typeof body === "object") {
    const doc = body as Record<string, unknown>;
    return String(doc.detail ?? doc.title ?? JSON.stringify(doc));
  }
  return String(body ?? "").slice(0, 200);
}
