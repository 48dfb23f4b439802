import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutbox, type Outbox } from '../../src/index.js';
import { count, setupOutboxTest, testLogger, waitFor, type OutboxTestContext } from '../helpers/outbox.js';
import { hostAndPort, startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

const SESSION_TIMEOUT_MS = 2_000;
const STANDBY_POLL_MS = 200;
/** The client gives up after the session timeout, the server ends the idle session after it plus a poll. */
const TAKEOVER_BOUND_MS = 2 * SESSION_TIMEOUT_MS + STANDBY_POLL_MS + 8_000;

describe('an active relay whose connection goes silent without closing (half-open)', () => {
  let t: OutboxTestContext;
  let proxy: TcpProxy;
  let proxiedPool: pg.Pool;
  let first: Outbox;
  let standby: Outbox;

  beforeAll(async () => {
    t = await setupOutboxTest();
    proxy = await startTcpProxy(hostAndPort(t.db.url), ['pg_try_advisory_lock']);
    proxiedPool = new pg.Pool({ connectionString: proxy.url(t.db.url), max: 4 });
    const relay = { sessionTimeoutMs: SESSION_TIMEOUT_MS, standbyPollMs: STANDBY_POLL_MS };
    first = createOutbox({ pool: proxiedPool, logger: testLogger, relay, consumers: false });
    standby = t.outbox({ relay, consumers: false });
  });
  afterAll(async () => {
    // A pg client ends by waiting for its socket to close, which a black-holed connection never does.
    for (const c of proxy?.connections ?? []) if (c.silent) c.destroy();
    await first?.stop();
    await proxiedPool?.end();
    await proxy?.close();
    await t?.close();
  });

  it('gives up the silent connection, and the server frees the relay lock, so relaying goes on', async () => {
    const leaders: string[] = [];
    const errors: string[] = [];
    first.on('relay:leader', ({ leader }) => leaders.push(`first ${leader}`));
    first.on('error', (error, { component }) => errors.push(`${component}: ${String(error)}`));
    standby.on('relay:leader', ({ leader }) => leaders.push(`standby ${leader}`));
    await first.start();
    await waitFor('the first relay is active', () => leaders.includes('first true'));
    await standby.start();
    await standby.declareSubscription('s', { topics: ['t'] });
    await standby.publish(t.pool, 't', { before: true });
    const relayed = () => count(t.pool, 'SELECT count(*) AS n FROM outbox.deliveries');
    await waitFor('relayed before the cut', async () => (await relayed()) === 1);

    const lockConnection = proxy.connections.find((c) => c.saw('pg_try_advisory_lock'));
    expect(lockConnection).toBeDefined();
    lockConnection?.blackHole();
    const cutAt = Date.now();
    await standby.publish(t.pool, 't', { after: true });
    await waitFor('relayed after the cut', async () => (await relayed()) === 2, TAKEOVER_BOUND_MS);
    const tookMs = Date.now() - cutAt;

    // The silent query times out on the client (about when the server ends the session); the relay lock belongs
    // to a live session. (The relay lock's class only: a relay batch also holds a shared lock of another class.)
    await waitFor('the first relay gave up its silent connection', () =>
      errors.some((e) => e.startsWith('relay:')),
    );
    const { rows } = await t.pool.query<{ state: string | null }>(
      `SELECT a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid)
       WHERE l.locktype = 'advisory' AND l.classid = 1870000001 AND l.granted AND a.datname = current_database()`,
    );
    expect(rows).toHaveLength(1);
    console.info(
      `relay resumed ${tookMs} ms after its connection went silent; leaders: ${leaders.join(', ')}`,
    );
    await standby.publish(t.pool, 't', { later: true });
    await waitFor('and keeps relaying', async () => (await relayed()) === 3);
  }, 60_000);
});
