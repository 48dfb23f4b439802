import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { killChildren, spawnConsumer, type ConsumerChild } from './child.js';

const TOPIC = 'relay.kill';
const NAME = 'relay_kill';
const KILLS = 4;

describe('a relay process SIGKILLed mid-batch', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterEach(killChildren);
  afterAll(async () => t.close());

  /** Two relay processes with no consumers, told apart by application_name on their connections. */
  function spawnRelay(label: string): ConsumerChild {
    return spawnConsumer({ url: `${t.db.url}?application_name=${label}`, relay: true, subscriptions: [] });
  }

  /** The application_name of the connection holding this schema's relay lock, once one does. */
  async function activeRelay(): Promise<string> {
    return waitFor('a relay holds the lock', async () => {
      const { rows } = await t.pool.query<{ name: string }>(
        `SELECT a.application_name AS name
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.classid = 1870000001 AND l.granted AND a.datname = current_database()`,
      );
      return rows[0]?.name;
    });
  }

  it('loses and duplicates nothing while the active relay is killed again and again', async () => {
    const outbox = t.outbox({ relay: { enabled: false } });
    await outbox.declareSubscription(NAME, { topics: [TOPIC] });
    const relays = new Map<string, ConsumerChild>([
      ['relay-a', spawnRelay('relay-a')],
      ['relay-b', spawnRelay('relay-b')],
    ]);
    await Promise.all(
      [...relays.values()].map((c) => c.waitForEvents('relay ready', (e) => e.event === 'ready')),
    );

    // 8 producers commit steadily, some holding their transaction open so ids commit out of order.
    const committed: string[] = [];
    let producing = true;
    const producers = Array.from({ length: 8 }, async (_, p) => {
      const client = await t.pool.connect();
      try {
        for (let i = 0; producing; i++) {
          await client.query('BEGIN');
          const { id } = await outbox.publish(client, TOPIC, { p, i });
          if (i % 5 === 0) await new Promise((r) => setTimeout(r, Math.random() * 20));
          await client.query('COMMIT');
          committed.push(id);
        }
      } finally {
        client.release();
      }
    });

    for (let kill = 0; kill < KILLS; kill++) {
      const before = committed.length;
      await waitFor('traffic between kills', () => committed.length >= before + 150);
      const leader = await activeRelay();
      const child = relays.get(leader);
      if (child === undefined) throw new Error(`unexpected lock holder ${leader}`);
      await child.kill('SIGKILL');
      // The standby takes over; only then does the killed relay come back, as the new standby.
      await waitFor('the standby took over', async () => (await activeRelay()) !== leader);
      relays.set(leader, spawnRelay(leader));
    }
    producing = false;
    await Promise.all(producers);

    await waitFor(
      'every committed message relayed',
      async () => {
        const { rows } = await t.pool.query<{ n: string }>(
          'SELECT count(*) AS n FROM outbox.deliveries WHERE message_id = ANY($1::bigint[])',
          [committed],
        );
        return Number(rows[0]?.n) === committed.length;
      },
      30_000,
    );
    const { rows } = await t.pool.query<{ message_id: string; n: string }>(
      'SELECT message_id::text, count(*) AS n FROM outbox.deliveries GROUP BY message_id HAVING count(*) > 1',
    );
    expect(rows).toEqual([]);
    expect(committed.length).toBeGreaterThanOrEqual(KILLS * 150);
  });
});
