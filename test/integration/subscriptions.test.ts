import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutboxError, type Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// A subscription's settings (ordered, blockKeyOnDead) live in the database. A declaration that omits one keeps
// the stored value; a consumer whose options contradict the stored ones is refused, never silently obeyed.

const run = promisify(execFile);

function cli(args: string[], databaseUrl: string) {
  return run(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    env: { ...process.env, DATABASE_URL: databaseUrl, LOG_LEVEL: 'warn' },
    timeout: 60_000,
  });
}

async function rejectionOf(action: () => Promise<unknown>): Promise<unknown> {
  try {
    await action();
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to fail');
}

describe('subscription settings', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  async function stored(name: string) {
    const { rows } = await t.pool.query<{ topics: string[]; ordered: boolean; block_key_on_dead: boolean }>(
      `SELECT topics, ordered, block_key_on_dead FROM outbox.subscriptions WHERE name = $1`,
      [name],
    );
    return rows[0];
  }

  it('keeps an ordered subscription ordered when the CLI declares it again without --ordered, so the relay still fills ordered_key', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('cli-kept', { topics: ['cli.kept'], ordered: true });
    await cli(['declare', 'cli-kept', '--topic', 'cli.kept', '--topic', 'cli.kept.more'], t.db.url);
    expect(await stored('cli-kept')).toEqual({
      topics: ['cli.kept', 'cli.kept.more'],
      ordered: true,
      block_key_on_dead: false,
    });
    await outbox.start();
    await outbox.publish(t.pool, 'cli.kept.more', { n: 1 }, { key: 'order-1' });
    const orderedKey = await waitFor('the relay to fan the message out', async () => {
      const { rows } = await t.pool.query<{ ordered_key: string | null }>(
        `SELECT d.ordered_key FROM outbox.deliveries d
         JOIN outbox.subscriptions s ON s.id = d.subscription_id WHERE s.name = 'cli-kept'`,
      );
      return rows[0];
    });
    expect(orderedKey).toEqual({ ordered_key: 'order-1' });
    await outbox.stop();
  });

  it('changes ordered and blockKeyOnDead through the CLI only when a flag asks for it', async () => {
    const args = ['declare', 'cli-flags', '--topic', 'cli.flags'];
    await cli([...args, '--ordered', '--block-key-on-dead'], t.db.url);
    expect(await stored('cli-flags')).toMatchObject({ ordered: true, block_key_on_dead: true });
    await cli(args, t.db.url);
    expect(await stored('cli-flags')).toMatchObject({ ordered: true, block_key_on_dead: true });
    await cli([...args, '--no-block-key-on-dead'], t.db.url);
    expect(await stored('cli-flags')).toMatchObject({ ordered: true, block_key_on_dead: false });
    await cli([...args, '--no-ordered'], t.db.url);
    expect(await stored('cli-flags')).toMatchObject({ ordered: false, block_key_on_dead: false });
    // blockKeyOnDead needs an ordered subscription: refused, nothing changes.
    await expect(cli([...args, '--block-key-on-dead'], t.db.url)).rejects.toMatchObject({
      code: 8, // invalid input (README: CLI exit codes)
      stderr: expect.stringContaining('OUTBOX_INVALID_OPTION') as unknown,
    });
    expect(await stored('cli-flags')).toMatchObject({ ordered: false, block_key_on_dead: false });
  });

  it('declareSubscription creates with false and later changes only the options it is given', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('api-kept', { topics: ['api.kept'] });
    expect(await stored('api-kept')).toEqual({
      topics: ['api.kept'],
      ordered: false,
      block_key_on_dead: false,
    });
    await outbox.declareSubscription('api-kept', {
      topics: ['api.kept'],
      ordered: true,
      blockKeyOnDead: true,
    });
    await outbox.declareSubscription('api-kept', { topics: ['api.kept', 'api.more'] });
    expect(await stored('api-kept')).toEqual({
      topics: ['api.kept', 'api.more'],
      ordered: true,
      block_key_on_dead: true,
    });
    await outbox.declareSubscription('api-kept', { topics: ['api.kept'], blockKeyOnDead: false });
    expect(await stored('api-kept')).toEqual({
      topics: ['api.kept'],
      ordered: true,
      block_key_on_dead: false,
    });

    // Turning ordering off while dead letters block their key, or blocking keys of an unordered subscription:
    // a coded error, and the row stays as it was (topics included).
    await outbox.declareSubscription('api-kept', { topics: ['api.kept'], blockKeyOnDead: true });
    const off = await rejectionOf(() =>
      outbox.declareSubscription('api-kept', { topics: ['api.other'], ordered: false }),
    );
    expect(off).toBeInstanceOf(OutboxError);
    expect(off).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
    expect(await stored('api-kept')).toEqual({
      topics: ['api.kept'],
      ordered: true,
      block_key_on_dead: true,
    });
    const fresh = await rejectionOf(() =>
      outbox.declareSubscription('api-fresh', { topics: ['api.fresh'], blockKeyOnDead: true }),
    );
    expect(fresh).toMatchObject({ code: 'OUTBOX_INVALID_OPTION' });
    expect(await stored('api-fresh')).toBeUndefined();
  });

  it('runs a consumer whose subscribe() omits ordered and blockKeyOnDead with the stored values', async () => {
    const topic = 'stored.block';
    const outbox = t.outbox();
    await outbox.declareSubscription('stored-block', {
      topics: [topic],
      ordered: true,
      blockKeyOnDead: true,
    });
    const handled: string[] = [];
    outbox.subscribe('stored-block', { topics: [topic], maxAttempts: 1, pollIntervalMs: 50 }, (m) => {
      const { name } = m.payload as { name: string };
      if (name === 'k0') throw new Error('poison head: fails its only attempt');
      handled.push(name);
    });
    let dead = 0;
    outbox.on('delivery:dead', () => (dead += 1));
    await outbox.publishMany(
      t.pool,
      ['k0', 'k1', 'k2'].map((name) => ({ topic, key: 'k', payload: { name } })),
    );
    await outbox.start();
    await waitFor('the head of key k to be dead-lettered', () => dead === 1);
    // A message of another key published after the dead head: once it is handled, k1 (due earlier) would have been
    // claimed too, had the consumer not blocked the key.
    await outbox.publish(t.pool, topic, { name: 'z' }, { key: 'z' });
    await waitFor('the other key to be handled', () => handled.includes('z'));
    expect(handled).toEqual(['z']);
    expect(await stored('stored-block')).toMatchObject({ ordered: true, block_key_on_dead: true });
    await outbox.stop();
  });

  it('refuses to start a consumer whose options conflict with the stored ones, naming both values, and changes nothing', async () => {
    const outbox = t.outbox();
    await outbox.declareSubscription('conflict', { topics: ['conflict.a'], ordered: true });
    outbox.subscribe('conflict', { topics: ['conflict.b'], ordered: false }, () => undefined);
    const error = await rejectionOf(() => outbox.start());
    expect(error).toBeInstanceOf(OutboxError);
    expect(error).toMatchObject({ code: 'OUTBOX_SUBSCRIPTION_CONFLICT' });
    const { message } = error as OutboxError;
    expect(message).toContain('"conflict"');
    expect(message).toContain('ordered: true');
    expect(message).toContain('ordered: false');
    expect(message).toContain('declareSubscription');
    expect(message).toContain('pg-outbox declare conflict');
    expect(message).toContain('--no-ordered');
    expect(await stored('conflict')).toEqual({
      topics: ['conflict.a'],
      ordered: true,
      block_key_on_dead: false,
    });

    const block = t.outbox();
    block.subscribe('conflict', { topics: ['conflict.a'], blockKeyOnDead: true }, () => undefined);
    await expect(block.start()).rejects.toMatchObject({
      code: 'OUTBOX_SUBSCRIPTION_CONFLICT',
      message: expect.stringContaining('--block-key-on-dead') as unknown,
    });
  });

  it('reports the conflict of a subscribe() after start() as an error event and does not run that consumer', async () => {
    const outbox: Outbox = t.outbox();
    await outbox.declareSubscription('late-conflict', { topics: ['late.conflict'] });
    await outbox.start();
    const errors: unknown[] = [];
    outbox.on('error', (error) => errors.push(error));
    let handled = 0;
    outbox.subscribe('late-conflict', { topics: ['late.conflict'], ordered: true }, () => {
      handled += 1;
    });
    await waitFor('the error event', () => errors.length > 0);
    expect(errors[0]).toMatchObject({ code: 'OUTBOX_SUBSCRIPTION_CONFLICT' });
    expect(await stored('late-conflict')).toMatchObject({ ordered: false });
    await outbox.stop();
    expect(handled).toBe(0);
  });
});
