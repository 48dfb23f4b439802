import type { Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { selectJourneyDeliveries, selectJourneyFailures, selectJourneyMessage } from './sql/journey.js';
import type { MessageJourney } from './types.js';

/** A message and its journey across subscriptions, from the audit views; null when no such message is retained. */
export async function readJourney(
  exec: Executor,
  s: SchemaName,
  messageId: string,
): Promise<MessageJourney | null> {
  const [message, deliveries, failures] = await Promise.all([
    selectJourneyMessage(exec, s, messageId),
    selectJourneyDeliveries(exec, s, messageId),
    selectJourneyFailures(exec, s, messageId),
  ]);
  if (message === null) return null;
  return {
    message: {
      id: message.message_id,
      topic: message.topic,
      key: message.key,
      headers: message.headers,
      payload: message.payload,
      publishedAt: message.published_at,
      deliverAt: message.deliver_at,
      relayed: message.relayed,
      relayedAt: message.relayed_at,
      cancelledAt: message.cancelled_at,
    },
    deliveries: deliveries.map((d) => ({
      subscription: d.subscription,
      deliveryId: d.delivery_id,
      status: d.status,
      attempts: d.attempts,
      firstAttemptAt: d.first_attempt_at,
      lastAttemptAt: d.last_attempt_at,
      completedAt: d.completed_at,
      lastError: d.last_error,
      consumer: d.consumer,
      relayedAt: d.relayed_at,
      dueAt: d.due_at,
    })),
    failures: failures.map((f) => ({
      subscription: f.subscription,
      deliveryId: f.delivery_id,
      attempt: f.attempt,
      error: f.error,
      consumer: f.consumer,
      failedAt: f.failed_at,
    })),
  };
}
