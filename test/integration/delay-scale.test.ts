import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const WAITING = 1_000_000;

interface PlanNode {
  'Node Type': string;
  'Index Name'?: string;
  'Actual Rows'?: number;
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  Plans?: PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

describe('claiming with a million delayed deliveries waiting', () => {
  let t: OutboxTestContext;
  let subscriptionId = 0;
  beforeAll(async () => {
    t = await setupOutboxTest();
    await t.outbox().declareSubscription('scale', { topics: ['scale.test'] });
    const { rows } = await t.pool.query<{ id: number }>(
      `SELECT id FROM outbox.subscriptions WHERE name = 'scale'`,
    );
    subscriptionId = rows[0]?.id ?? 0;
  });
  afterAll(async () => t.close());

  /** The claim's due-row scan, as the consumer runs it, with the blocks it touched. */
  async function explainClaim(): Promise<PlanNode[]> {
    const client = await t.pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
        `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
         SELECT q.id FROM outbox.deliveries q
         WHERE q.subscription_id = $1::int AND q.state = 'pending' AND q.available_at <= now()
         ORDER BY q.available_at, q.id
         LIMIT 100
         FOR UPDATE SKIP LOCKED`,
        [subscriptionId],
      );
      await client.query('ROLLBACK');
      const plan = rows[0]?.['QUERY PLAN'][0]?.Plan;
      if (plan === undefined) throw new Error('no plan');
      return nodes(plan);
    } finally {
      client.release();
    }
  }

  it('reads the due rows through the index and touches a handful of blocks, not the waiting rows', async () => {
    const empty = await explainClaim();
    await t.pool.query(
      `INSERT INTO outbox.deliveries (subscription_id, message_id, available_at)
       SELECT $1::int, -g, now() + interval '1 day' + g * interval '1 millisecond'
       FROM generate_series(1, $2::int) g`,
      [subscriptionId, WAITING],
    );
    await t.pool.query('ANALYZE outbox.deliveries');
    const full = await explainClaim();
    for (const plan of [empty, full]) {
      const scan = plan.find((n) => n['Index Name'] === 'deliveries_due_idx');
      expect(scan?.['Node Type']).toBe('Index Scan');
      expect(plan.some((n) => n['Node Type'] === 'Seq Scan' || n['Node Type'] === 'Sort')).toBe(false);
    }
    const blocks = (plan: PlanNode[]) =>
      plan.reduce((sum, n) => sum + (n['Shared Hit Blocks'] ?? 0) + (n['Shared Read Blocks'] ?? 0), 0);
    console.info(
      `claim with 0 waiting: ${blocks(empty)} blocks; with ${WAITING} waiting: ${blocks(full)} blocks`,
    );
    expect(blocks(full)).toBeLessThan(20);

    // And real work still flows past them at once.
    const outbox = t.outbox();
    const handled: string[] = [];
    outbox.subscribe('scale', { topics: ['scale.test'] }, (m) => {
      handled.push(m.id);
    });
    await outbox.start();
    const { id } = await outbox.publish(t.pool, 'scale.test', { now: true });
    await waitFor('the due message is handled', () => handled.includes(id));
    await outbox.stop();
  });
});
