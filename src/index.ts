export { createOutbox, type Outbox } from './create-outbox.js';
export type { OutboxOptions, RelayOptions } from './options.js';
export {
  OutboxError,
  RetryAfterError,
  DiscardError,
  retryAfter,
  discard,
  isOutboxError,
  type OutboxErrorCode,
} from './errors.js';
export type { OutboxEvents, EventName } from './events.js';
export type { Queryable, TransactionOf } from './db/executor.js';
export type { DeadLetterQuery } from './admin.js';
export type { CleanupResult } from './maintenance.js';
export type { MetricsOptions, MetricsRegistry, OutboxMetrics } from './telemetry/metrics.js';
export type { TracingOptions } from './telemetry/tracing.js';
export type { AdminHandlerOptions, AdminRequestHandler } from './admin-ui/handler.js';
export type { AdminAction } from './admin-ui/auth.js';
export type { DiscardOptions } from './discard-dead-letters.js';
export type { ResetRelayResult } from './relay/reset.js';
export { rabbitmq, UnroutableError, type RabbitMqOptions } from './forward/rabbitmq.js';
export { nats, type NatsOptions } from './forward/nats.js';
export type { ForwardOptions, ForwardTarget } from './forward/target.js';
export { createWeakCheck, type WeakCheck, type WeakCheckOptions, type RedisCommands } from './weak-check.js';
export type {
  TypedTopic,
  TypedPublishInput,
  TopicSubscribeOptions,
  TopicPayloadIssue,
  InferSchemaInput,
  InferSchemaOutput,
} from './typed-topic.js';
export type * from './types.js';
