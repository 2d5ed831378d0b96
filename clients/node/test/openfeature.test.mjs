// FpcdProvider with the OpenFeature server SDK: typed values, reasons, change events.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { OpenFeature, ProviderEvents } from "@openfeature/server-sdk";

import { ConfigurationClient } from "../dist/esm/index.js";
import { FpcdProvider } from "../dist/esm/openfeature.js";
import { Daemon } from "./daemon.mjs";

let daemon;
before(async () => {
  daemon = await new Daemon().start();
});
after(async () => {
  await OpenFeature.close();
  await daemon?.destroy();
});

test("values by type, with fpcd's reasons and variants, and change events", async () => {
  await daemon.api("PUT", "/api/features/checkout", {
    name: "checkout",
    enabled: true,
    variants: [
      { id: "control", weight: 1, configuration: { steps: 3 } },
      { id: "onepage", weight: 1, configuration: { steps: 1 } },
    ],
  });
  await daemon.api("PUT", "/api/features/banner", { name: "banner", enabled: true, variants: [{ id: "blue" }] });
  await daemon.api("PUT", "/api/features/limit", { name: "limit", enabled: true, variants: [{ id: "high", configuration: 500 }] });
  await daemon.api("PUT", "/api/features/off", { name: "off", enabled: false });
  const client = new ConfigurationClient({ apiUrl: daemon.url, serviceName: "shop", environment: "production", token: daemon.token });
  await OpenFeature.setProviderAndWait(new FpcdProvider(client));
  const of = OpenFeature.getClient();
  const ctx = { targetingKey: "u-42" };

  const expected = client.evaluate("checkout", { userId: "u-42" });
  const details = await of.getObjectDetails("checkout", {}, ctx);
  assert.deepEqual(details.value, expected.configuration);
  assert.equal(details.variant, expected.variant);
  assert.equal(details.reason, "SPLIT");
  assert.equal(await of.getBooleanValue("checkout", false, ctx), true);
  assert.equal(await of.getStringValue("banner", "none", ctx), "blue");
  assert.equal(await of.getNumberValue("limit", 1, ctx), 500);

  const off = await of.getBooleanDetails("off", true, ctx);
  assert.deepEqual([off.value, off.reason], [false, "DISABLED"]);
  const missing = await of.getBooleanDetails("nope", true, ctx);
  assert.deepEqual([missing.value, missing.errorCode], [true, "FLAG_NOT_FOUND"]);
  const mismatch = await of.getNumberDetails("banner", 7, ctx);
  assert.deepEqual([mismatch.value, mismatch.errorCode], [7, "TYPE_MISMATCH"]);
  const invalid = await of.getBooleanDetails("checkout", false, { userId: 5 });
  assert.equal(invalid.errorCode, "INVALID_CONTEXT");

  const changed = new Promise((resolve) =>
    of.addHandler(ProviderEvents.ConfigurationChanged, (event) => {
      if (event?.flagsChanged?.includes("checkout")) resolve(event);
    }),
  );
  await daemon.api("PATCH", "/api/features/checkout", { enabled: false });
  await changed;
  assert.equal(await of.getBooleanValue("checkout", true, ctx), false);
  await client.close();
});
