import type { Channel, Message } from 'amqplib';
import { waitFor } from './outbox.js';

/** The outbox message id a forwarded copy carries (the AMQP messageId is a forward id, not the plain id). */
export function outboxId(m: Message): string {
  return String(m.properties.headers?.['x-outbox-message-id']);
}

/**
 * Binds a new exclusive queue to `exchange` for `pattern` and consumes it without acks: the returned array fills
 * with the outbox message id of every copy the broker delivers, duplicates included.
 */
export async function collectIds(channel: Channel, exchange: string, pattern: string): Promise<string[]> {
  const ids: string[] = [];
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(queue, exchange, pattern);
  await channel.consume(queue, (m) => m && ids.push(outboxId(m)), { noAck: true });
  return ids;
}

/**
 * Reads a queue to its end, acking each copy, and returns their message ids: once the forwarders are done and
 * stopped, what the queue holds is all there is.
 */
export async function drainIds(channel: Channel, queue: string): Promise<string[]> {
  const { messageCount } = await channel.checkQueue(queue);
  const ids: string[] = [];
  await channel.prefetch(1_000);
  const { consumerTag } = await channel.consume(queue, (m) => {
    if (m === null) return;
    ids.push(outboxId(m));
    channel.ack(m);
  });
  await waitFor(`${messageCount} messages read from ${queue}`, () => ids.length >= messageCount, 30_000);
  await channel.cancel(consumerTag);
  return ids;
}
