export { ConfigurationClient } from "./client.js";
export type { ClientEvents, ClientOptions, Configuration, ConfigurationReload } from "./client.js";
export { FlagSocketClient, FlagSocketError } from "./flagsocket.js";
export { FpcdClientError, FpcdUnavailable } from "./http.js";
export {
  active,
  bucket,
  compileFlag,
  evaluate,
  parseInstant,
  variantSlot,
  BUCKETS,
} from "./flags.js";
export type {
  CompiledFlag,
  EvaluationContext,
  EvaluationResult,
  FlagDocument,
  Reason,
  Rollout,
  Rule,
  Variant,
} from "./flags.js";
