import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Outbox, OutboxMessage } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { createEffectsTable, deliveriesOf, killChildren, spawnFixture, type ChildEvent } from './child.js';
import type { BlockingChildConfig } from './fixtures/blocking.fixture.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/blocking.fixture.ts', import.meta.url));
const LEASE_MS = 1_500;
const NAME = 'blocked';
const TOPIC = 'block.loop';

type BlockingEvent = ChildEvent & { blockedMs?: number };

describe('a handler that blocks its event loop past the lease', () => {
  let t: OutboxTestContext;
  let relay: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    await createEffectsTable(t.pool);
    relay = t.outbox();
    await relay.start();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  it('lets another consumer re-claim and ack the delivery, and fences off the late ack of the blocked process', async () => {
    await relay.declareSubscription(NAME, { topics: [TOPIC] });
    const dir = await mkdtemp(path.join(tmpdir(), 'pg-outbox-block-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const config: BlockingChildConfig = {
      url: t.db.url,
      subscription: NAME,
      topic: TOPIC,
      leaseMs: LEASE_MS,
      releaseFile: path.join(dir, 'release'),
    };
    const child = spawnFixture(FIXTURE, config);
    const events = child.events as BlockingEvent[];
    await child.waitForEvents('child ready', (e) => e.event === 'ready', 1, 30_000);
    const { id } = await relay.publish(t.pool, TOPIC, { block: true });
    await child.waitForEvents('the child started the handler', (e) => e.event === 'started' && e.id === id);
    // From here the child's event loop is blocked, until we release it: no heartbeat extends its lease, no timer
    // fires.

    const second = t.outbox({ relay: { enabled: false } });
    const seen: OutboxMessage[] = [];
    second.subscribe(NAME, { topics: [TOPIC], leaseMs: LEASE_MS, pollIntervalMs: 200 }, async (m) => {
      await t.pool.query(
        'INSERT INTO public.chaos_effects (subscription, message_id, attempt) VALUES ($1, $2, $3)',
        [NAME, m.id, m.attempt],
      );
      seen.push(m);
    });
    await second.start();
    await waitFor(
      'the second consumer acked',
      async () => (await deliveriesOf(t.pool, NAME))[0]?.state === 'done',
      30_000,
    );
    expect(seen.map((m) => [m.id, m.attempt])).toEqual([[id, 2]]);
    const deliveryId = seen[0]?.deliveryId;

    // Released, the blocked handler wakes, finishes its work and acks on attempt 1: the ack is fenced off.
    await writeFile(config.releaseFile, '');
    await child.waitForEvents('the child found its ack fenced off', (e) =>
      (e.message ?? '').includes('outcome not recorded'),
    );
    const stale = events.filter((e) => (e.message ?? '').includes('outcome not recorded'));
    expect(stale.map((e) => [e.deliveryId, e.attempt])).toEqual([[deliveryId, 1]]);
    const unblocked = events.filter((e) => e.event === 'unblocked');
    expect(unblocked.map((e) => [e.id, e.attempt])).toEqual([[id, 1]]);
    // Nothing ran in the child while it was blocked: its next word after `started` is `unblocked`.
    const startedAt = events.findIndex((e) => e.event === 'started' && e.id === id);
    expect(events[startedAt + 1]?.event).toBe('unblocked');
    console.info(`the child's event loop was blocked for ${unblocked[0]?.blockedMs} ms`);
    expect(events.filter((e) => e.event === 'handled').map((e) => [e.id, e.attempt])).toEqual([[id, 1]]);

    // Both handlers ran (at-least-once), but the delivery completed exactly once, by the second consumer's attempt.
    const effects = await t.pool.query<{ attempt: number }>(
      'SELECT attempt FROM public.chaos_effects WHERE message_id = $1 ORDER BY attempt',
      [id],
    );
    expect(effects.rows.map((r) => r.attempt)).toEqual([1, 2]);
    const completed = await t.pool.query<{ id: string; attempt: number }>(
      'SELECT id::text, attempt FROM outbox.completed_deliveries WHERE message_id = $1',
      [id],
    );
    expect(completed.rows).toEqual([{ id: deliveryId, attempt: 2 }]);
    const audit = await deliveriesOf(t.pool, NAME);
    expect(audit.map((d) => [d.message_id, d.state, d.attempt])).toEqual([[id, 'done', 2]]);
    expect(audit[0]?.last_error).toMatch(/^lease expired/);

    // The blocked process recovered: with the other consumer gone, it handles the next message itself.
    await second.stop();
    const next = await relay.publish(t.pool, TOPIC, {});
    await child.waitForEvents(
      'the child handled the next message',
      (e) => e.event === 'handled' && e.id === next.id,
    );
    await waitFor('its ack recorded', async () =>
      (await deliveriesOf(t.pool, NAME)).every((d) => d.state === 'done'),
    );
    expect((await deliveriesOf(t.pool, NAME)).find((d) => d.message_id === next.id)).toMatchObject({
      state: 'done',
      attempt: 1,
    });
    expect(await child.kill('SIGTERM')).toEqual({ code: 0, signal: null });
  }, 90_000);
});
