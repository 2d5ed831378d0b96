// The original's documented usage, type-checked against the published declarations.
import { ConfigurationClient, type EvaluationResult } from "@fpcd/client";
import { FpcdProvider } from "@fpcd/client/openfeature";

const token = process.env.FPCD_TOKEN;
const client = new ConfigurationClient({
  apiUrl: "http://localhost:3001",
  wsUrl: "ws://localhost:8080",
  serviceName: "user-service",
  environment: "production",
  token,
});

async function main(): Promise<void> {
  const config: Record<string, unknown> = await client.getConfiguration();
  const flags: Record<string, EvaluationResult> = await client.evaluateFlags({ userId: "user-123", userGroup: "premium" });
  client.on("configurationUpdate", (newConfig) => {
    const copy: Record<string, unknown> = newConfig;
    void copy;
  });
  client.on("featureFlagUpdate", (flagKey, enabled) => {
    const key: string = flagKey;
    const on: boolean = enabled;
    void [key, on];
  });
  client.on("configurationReload", (reload) => void reload.force);
  client.on("error", (error) => void error.message);
  const on: boolean = client.isEnabled("premium_dashboard", { userId: "user-123" });
  const result: EvaluationResult = client.evaluate("premium_dashboard", { userId: "user-123" });
  void [config, flags, on, result, new FpcdProvider(client)];
  await client.close();
}

void main;
