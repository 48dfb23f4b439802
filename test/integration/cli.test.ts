import { execFile, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox, OutboxStatus, SubscriptionStatus } from '../../src/index.js';
import amqp from 'amqplib';
import { AMQP_URL, brokerMissing } from '../helpers/brokers.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const SCHEMA = 'cli_outbox';
const CLI = ['--import', 'tsx', 'src/cli/main.ts'];

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface CliOptions {
  /** DATABASE_URL for the child; null leaves it unset. Default: the test database. */
  url?: string | null;
  /** --schema; null passes none. Default: cli_outbox. */
  schema?: string | null;
}

let t: OutboxTestContext;

function cliEnv(url: string | null): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'warn' };
  delete env.DATABASE_URL;
  if (url !== null) env.DATABASE_URL = url;
  return env;
}

function cliArgs(args: string[], schema: string | null): string[] {
  return [...CLI, ...(schema === null ? [] : ['--schema', schema]), ...args];
}

/** Runs the CLI in a child Node process, the way a user runs it, and resolves with its exit code and output. */
function cli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const env = cliEnv(options.url === undefined ? t.db.url : options.url);
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      cliArgs(args, options.schema === undefined ? SCHEMA : options.schema),
      { env, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The CLI's `--json` output, after checking that it succeeded. */
async function cliJson<T>(args: string[], options?: CliOptions): Promise<T> {
  const result = await cli([...args, '--json'], options);
  expect(result, result.stderr).toMatchObject({ code: 0 });
  return JSON.parse(result.stdout) as T;
}

/** The one stderr line of a failed command. */
function expectFailure(result: CliResult, exitCode: number, line: RegExp): void {
  expect(result.code, result.stderr).toBe(exitCode);
  expect(result.stderr).toMatch(/^pg-outbox: [^\n]+ \[[\w.]+\]\n$/);
  expect(result.stderr).toMatch(line);
}

/** A text table's row that starts with `first`, split into its cells. */
function row(stdout: string, first: string): string[] | undefined {
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s{2,}/))
    .find((cells) => cells[0] === first);
}

let lib: Outbox;
/** Message ids whose failing handler has been fixed: their next attempt succeeds. */
const healed = new Set<string>();
/** Message id → how often the `history` subscription handled it. */
const handled = new Map<string, number>();

async function subscription(name: string, outbox: Outbox = lib): Promise<SubscriptionStatus | undefined> {
  return (await outbox.status()).subscriptions.find((s) => s.name === name);
}

/** Waits until the relay has fanned out every committed message and `check` holds for the status. */
function waitForStatus(label: string, check: (status: OutboxStatus) => boolean, outbox: Outbox = lib) {
  return waitFor(
    label,
    async () => {
      const status = await outbox.status();
      return status.relay.backlog === 0 && check(status);
    },
    30_000,
    50,
  );
}

const find = (status: OutboxStatus, name: string) => status.subscriptions.find((s) => s.name === name);

async function publish(topic: string, payload: unknown = {}, options = {}): Promise<string> {
  return (await lib.publish(t.pool, topic, payload, options)).id;
}

/** Dead-letters every message of `topics` at its first attempt, unless its id was healed. */
function subscribeFailing(name: string, topics: string[]): void {
  lib.subscribe(name, { topics, maxAttempts: 1, pollIntervalMs: 50 }, (message) => {
    if (!healed.has(message.id)) throw new Error(`boom on line one\nline two of ${message.id}`);
  });
}

async function deadLetterIds(name: string, n: number): Promise<{ deliveryId: string; messageId: string }[]> {
  return waitFor(`${n} dead letters in ${name}`, async () => {
    const dead = await lib.deadLetters(name);
    return dead.length === n && dead;
  });
}

beforeAll(async () => {
  t = await setupOutboxTest();
  lib = t.outbox({ schema: SCHEMA, relay: { pollIntervalMs: 20 } });
  await lib.migrate();
  await lib.declareSubscription('idle', { topics: ['idle.created'] });
  await lib.declareSubscription('watch_show', { topics: ['show.#'] });
  await lib.declareSubscription('later', { topics: ['later.created'] });
  subscribeFailing('failing_status', ['status.failed']);
  subscribeFailing('failing_show', ['show.#']);
  subscribeFailing('dead_list', ['deadlist.created']);
  subscribeFailing('dead_replay', ['replay.created']);
  subscribeFailing('dead_discard', ['discard.created']);
  lib.subscribe('history', { topics: ['history.created'], pollIntervalMs: 50 }, (message) => {
    handled.set(message.id, (handled.get(message.id) ?? 0) + 1);
  });
  await lib.start();
});
afterAll(async () => t.close());

describe('pg-outbox migrate and declare', () => {
  it('migrates a new schema, again without error, and reports it empty', async () => {
    const first = await cli(['migrate'], { schema: 'cli_fresh' });
    expect(first, first.stderr).toMatchObject({ code: 0, stdout: 'schema "cli_fresh" is migrated\n' });
    expect(await cli(['migrate'], { schema: 'cli_fresh' })).toMatchObject({ code: 0 });
    expect(await cliJson(['status'], { schema: 'cli_fresh' })).toEqual({
      subscriptions: [],
      relay: { backlog: 0, lagMs: 0 },
    });
    const status = await cli(['status'], { schema: 'cli_fresh' });
    expect(status.stdout).toContain('no subscriptions in schema "cli_fresh"');
  });

  it('declares an ordered subscription, and a later declare that only changes the topics keeps it ordered', async () => {
    const declared = await cli([
      'declare',
      'orders',
      '--topic',
      'order.paid',
      '--topic',
      'order.refunded',
      '--ordered',
    ]);
    expect(declared, declared.stderr).toMatchObject({ code: 0 });
    expect(declared.stdout).toBe(
      'declared subscription "orders": topics order.paid, order.refunded; ordered on, block key on dead as stored, ' +
        'rate limit as stored, key concurrency as stored\n',
    );
    const orders = async () => find(await cliJson<OutboxStatus>(['status']), 'orders');
    expect(await orders()).toMatchObject({
      topics: ['order.paid', 'order.refunded'],
      ordered: true,
      blockKeyOnDead: false,
    });

    expect(await cliJson(['declare', 'orders', '--topic', 'order.#'])).toEqual({
      subscription: 'orders',
      topics: ['order.#'],
    });
    expect(await orders()).toMatchObject({ topics: ['order.#'], ordered: true, blockKeyOnDead: false });

    await cliJson(['declare', 'orders', '--topic', 'order.#', '--block-key-on-dead']);
    expect(await orders()).toMatchObject({ ordered: true, blockKeyOnDead: true });
    await cliJson(['declare', 'orders', '--topic', 'order.#', '--no-ordered', '--no-block-key-on-dead']);
    expect(await orders()).toMatchObject({ ordered: false, blockKeyOnDead: false });
  });

  it('sets and removes the flow-control limits, and refuses --burst without --rate-limit', async () => {
    const limits = async () => find(await cliJson<OutboxStatus>(['status']), 'throttled');
    const set = await cli([
      'declare',
      'throttled',
      '--topic',
      'throttle.me',
      '--rate-limit',
      '50',
      '--burst',
      '5',
      '--key-concurrency',
      '3',
    ]);
    expect(set, set.stderr).toMatchObject({ code: 0 });
    expect(set.stdout).toContain('rate limit 50/s, key concurrency 3');
    expect(await limits()).toMatchObject({ rateLimit: { perSecond: 50, burst: 5 }, keyConcurrency: 3 });
    await cliJson(['declare', 'throttled', '--topic', 'throttle.me', '--no-rate-limit']);
    expect(await limits()).toMatchObject({ rateLimit: null, keyConcurrency: 3 });
    await cliJson(['declare', 'throttled', '--topic', 'throttle.me', '--no-key-concurrency']);
    expect(await limits()).toMatchObject({ rateLimit: null, keyConcurrency: null });

    const bad = await cli(['declare', 'throttled', '--topic', 'throttle.me', '--burst', '5']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('--burst needs --rate-limit');
    const zero = await cli(['declare', 'throttled', '--topic', 'throttle.me', '--key-concurrency', '0']);
    expect(zero.code).not.toBe(0);
    expect(zero.stderr).toContain('expected a positive integer');
  });
});

describe('pg-outbox status', () => {
  it('shows the pending deliveries of a subscription nobody consumes and a dead letter, as text and JSON', async () => {
    for (let i = 0; i < 3; i++) await publish('idle.created', { i });
    await publish('status.failed');
    await waitForStatus(
      'idle has 3 pending, failing_status 1 dead',
      (s) => find(s, 'idle')?.pending === 3 && find(s, 'failing_status')?.dead === 1,
    );

    const text = await cli(['status']);
    expect(text, text.stderr).toMatchObject({ code: 0 });
    const lines = text.stdout.split('\n');
    expect(lines[0]).toMatch(
      /^SUBSCRIPTION\s+PENDING\s+DELAYED\s+IN FLIGHT\s+DEAD\s+DONE\/1H\s+FAILED\/1H\s+OLDEST PENDING$/,
    );
    const idle = row(text.stdout, 'idle');
    expect(idle?.slice(0, 7)).toEqual(['idle', '3', '0', '0', '0', '0', '0']);
    expect(idle?.[7]).toMatch(/^\d+(ms|s|m|h|d)( \d+[smhd])?$/);
    expect(row(text.stdout, 'failing_status')?.slice(0, 5)).toEqual(['failing_status', '0', '0', '0', '1']);
    expect(text.stdout).toMatch(/^relay backlog 0, lag 0ms$/m);

    const json = await cliJson<OutboxStatus>(['status']);
    expect(find(json, 'idle')).toMatchObject({ topics: ['idle.created'], pending: 3, delayed: 0, dead: 0 });
    expect(find(json, 'idle')?.oldestPendingMs).toBeGreaterThanOrEqual(0);
    expect(find(json, 'failing_status')).toMatchObject({ pending: 0, dead: 1, failedLastHour: 1 });
    expect(json.relay).toEqual({ backlog: 0, lagMs: 0 });
  });
});

describe('pg-outbox show', () => {
  it("prints a message's journey with one delivery per subscription, as text and JSON", async () => {
    const id = await publish('show.created', { n: 1 }, { key: 'k-1', headers: { trace: 't-1' } });
    await deadLetterIds('failing_show', 1);

    const text = await cli(['show', id]);
    expect(text, text.stderr).toMatchObject({ code: 0 });
    expect(text.stdout).toMatch(new RegExp(`^message\\s+${id}$`, 'm'));
    expect(text.stdout).toMatch(/^topic\s+show\.created$/m);
    expect(text.stdout).toMatch(/^key\s+k-1$/m);
    expect(text.stdout).toMatch(/^headers\s+\{"trace":"t-1"\}$/m);
    expect(text.stdout).toMatch(/^payload\s+\{"n":1\}$/m);
    expect(text.stdout).toMatch(/^relayed\s+\d{4}-\d\d-\d\dT/m);
    expect(row(text.stdout, 'watch_show')?.[2]).toBe('pending');
    const failed = text.stdout.split('\n').filter((line) => line.startsWith('failing_show'));
    expect(failed).toHaveLength(2); // its delivery, and its failure
    expect(failed[0]).toMatch(/ dead .*boom on line one line two/);

    const journey = await cliJson<{
      message: { id: string; key: string; relayed: boolean; headers: unknown };
      deliveries: { subscription: string; status: string; attempts: number }[];
      failures: { subscription: string; attempt: number; error: string }[];
    }>(['show', id]);
    expect(journey.message).toMatchObject({ id, key: 'k-1', relayed: true, headers: { trace: 't-1' } });
    const statuses = Object.fromEntries(journey.deliveries.map((d) => [d.subscription, d.status]));
    expect(statuses).toEqual({ failing_show: 'dead', watch_show: 'pending' });
    expect(journey.failures).toMatchObject([{ subscription: 'failing_show', attempt: 1 }]);
    expect(journey.failures[0]?.error).toContain('boom on line one');
  });

  it('exits 6 for an unknown message id and 8 for one that is not an id', async () => {
    expectFailure(await cli(['show', '999999999']), 6, /no message 999999999 .*\[OUTBOX_UNKNOWN_MESSAGE\]/);
    expectFailure(await cli(['show', 'abc']), 8, /\[OUTBOX_INVALID_OPTION\]/);
  });
});

describe('pg-outbox dead-letters', () => {
  it("lists a subscription's dead letters as a table, page by page, and as JSON", async () => {
    for (let i = 0; i < 3; i++) await publish('deadlist.created', { i }, { key: `key-${i}` });
    const dead = await deadLetterIds('dead_list', 3);

    const text = await cli(['dead-letters', 'dead_list']);
    expect(text, text.stderr).toMatchObject({ code: 0 });
    const lines = text.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^DELIVERY\s+MESSAGE\s+TOPIC\s+KEY\s+ATTEMPTS\s+DEAD AT\s+LAST ERROR$/);
    expect(lines).toHaveLength(4);
    dead.forEach((d, i) => {
      const cells = row(text.stdout, d.deliveryId);
      expect(cells?.slice(0, 5)).toEqual([d.deliveryId, d.messageId, 'deadlist.created', `key-${i}`, '1']);
      expect(cells?.[6]).toContain('boom on line one line two');
    });

    const page = await cli(['dead-letters', 'dead_list', '--limit', '2']);
    expect(page.stdout).toContain(`more may follow: --after ${dead[1]?.deliveryId}`);
    expect(row(page.stdout, dead[2]?.deliveryId ?? '')).toBeUndefined();
    const next = await cliJson<{ deliveryId: string }[]>([
      'dead-letters',
      'dead_list',
      '--after',
      dead[1]?.deliveryId ?? '',
    ]);
    expect(next.map((d) => d.deliveryId)).toEqual([dead[2]?.deliveryId]);

    const json = await cliJson<{ deliveryId: string; messageId: string; topic: string }[]>([
      'dead-letters',
      'dead_list',
    ]);
    expect(json.map((d) => d.deliveryId)).toEqual(dead.map((d) => d.deliveryId));
    expect(json[0]).toMatchObject({ messageId: dead[0]?.messageId, topic: 'deadlist.created', attempt: 1 });
  });
});

describe('pg-outbox replay', () => {
  it('queues one dead letter again with --id and the rest with --all', async () => {
    for (let i = 0; i < 3; i++) await publish('replay.created', { i });
    const [first, ...rest] = await deadLetterIds('dead_replay', 3);
    for (const d of [first, ...rest]) healed.add(d?.messageId ?? '');

    const one = await cli(['replay', 'dead_replay', '--id', first?.deliveryId ?? '']);
    expect(one, one.stderr).toMatchObject({
      code: 0,
      stdout: 'replayed 1 delivery of subscription "dead_replay"\n',
    });
    await waitFor('the replayed delivery is done', async () => {
      const journey = await lib.journey(first?.messageId ?? '');
      return journey?.deliveries.find((d) => d.subscription === 'dead_replay')?.status === 'done';
    });
    expect((await lib.deadLetters('dead_replay')).map((d) => d.deliveryId)).toEqual(
      rest.map((d) => d.deliveryId),
    );

    expect(await cliJson(['replay', 'dead_replay', '--all'])).toEqual({ replayed: 2 });
    await waitForStatus('dead_replay has no dead letters and 3 done', (s) => {
      const replayed = find(s, 'dead_replay');
      return replayed?.dead === 0 && replayed.doneLastHour === 3;
    });
  });

  it('re-delivers with --since only what was published since then, and says how to go on after --limit', async () => {
    const before = await publish('history.created');
    await waitFor('the first message handled', () => handled.get(before) === 1);
    const publishedAt = (await lib.journey(before))?.message.publishedAt;
    expect(publishedAt).toBeInstanceOf(Date);
    // The later messages must be published in a later millisecond than the first (Dates are milliseconds).
    const since = new Date((publishedAt?.getTime() ?? 0) + 1);
    await waitFor('the database clock passed the first message', async () => {
      const { rows } = await t.pool.query<{ passed: boolean }>(
        "SELECT clock_timestamp() > $1::timestamptz + interval '1 millisecond' AS passed",
        [since],
      );
      return rows[0]?.passed;
    });
    const later = [await publish('history.created'), await publish('history.created')];
    await waitFor('the later messages handled', () => later.every((id) => handled.get(id) === 1));

    const cut = await cli(['replay', 'history', '--since', since.toISOString(), '--limit', '1']);
    expect(cut, cut.stderr).toMatchObject({ code: 0 });
    expect(cut.stdout).toMatch(/^replayed 1 delivery of subscription "history"$/m);
    const next = new RegExp(
      `continue with: --since ${since.toISOString()} --after (\\d+:\\d+:\\d+)$`,
      'm',
    ).exec(cut.stdout)?.[1];
    expect(next).toBeDefined();
    expect(
      await cliJson(['replay', 'history', '--since', since.toISOString(), '--after', next ?? '']),
    ).toEqual({
      replayed: 1,
      next: null,
    });

    await waitFor('the later messages handled again', () => later.every((id) => handled.get(id) === 2));
    expect(handled.get(before)).toBe(1);
  });

  it('exits 2 unless exactly one of --id, --all and --since is given, or for a --since that is not a time', async () => {
    const results = await Promise.all([
      cli(['replay', 'dead_replay']),
      cli(['replay', 'dead_replay', '--all', '--id', '1']),
      cli(['replay', 'dead_replay', '--all', '--since', '2025-01-01T00:00:00Z']),
      cli(['replay', 'dead_replay', '--all', '--limit', '5']),
    ]);
    expectFailure(results[0], 2, /exactly one of --id, --all and --since; none was given \[USAGE\]/);
    expectFailure(results[1], 2, /got --id and --all \[USAGE\]/);
    expectFailure(results[2], 2, /got --all and --since \[USAGE\]/);
    expectFailure(results[3], 2, /--after and --limit go with --since \[USAGE\]/);
    expectFailure(
      await cli(['replay', 'dead_replay', '--since', 'not-a-date']),
      2,
      /ISO-8601 time.*\[USAGE\]/,
    );
  });

  it('exits 7 for a --since older than what retention has removed', async () => {
    const schema = 'cli_retention';
    // A retention of 1 ms lets purge() remove a message as soon as the relay has fanned it out.
    const short = t.outbox({ schema, retentionMs: 1, relay: { pollIntervalMs: 20 } });
    await short.migrate();
    await short.declareSubscription('kept', { topics: ['kept.created'] });
    await short.start();
    await short.publish(t.pool, 'unwatched.created', {});
    await waitFor(
      'retention removed the message',
      async () => (await short.purge()).messages === 1,
      30_000,
      50,
    );

    expectFailure(
      await cli(['replay', 'kept', '--since', '2000-01-01T00:00:00Z'], { schema }),
      7,
      /retention has removed .*\[OUTBOX_REPLAY_BEYOND_RETENTION\]/,
    );
  });
});

describe('pg-outbox cancel', () => {
  it('cancels a delayed message, and exits 6 for an unknown one', async () => {
    const id = await publish('later.created', {}, { delayMs: 3_600_000 });
    await waitForStatus('later has 1 delayed', (s) => find(s, 'later')?.delayed === 1);

    const cancelled = await cli(['cancel', id]);
    expect(cancelled, cancelled.stderr).toMatchObject({
      code: 0,
      stdout: `cancelled message ${id}: 1 delivery dropped\n`,
    });
    expect(await subscription('later')).toMatchObject({ delayed: 0, pending: 0 });
    expect(await cliJson(['cancel', id])).toEqual({ cancelled: 0 });

    expectFailure(await cli(['cancel', '999999999']), 6, /\[OUTBOX_UNKNOWN_MESSAGE\]/);
  });
});

describe('pg-outbox purge', () => {
  const COUNTS = ['messages', 'finishedDeliveries', 'failures', 'deadLetters', 'processedKeys'];

  it('counts with --dry-run and removes nothing, and prints the counts as text and JSON', async () => {
    const counts = async () =>
      (await cliJson<OutboxStatus>(['status'])).subscriptions.map(({ oldestPendingMs: _, ...s }) => s);
    const before = await counts();
    const dryRun = await cliJson<Record<string, unknown>>(['purge', '--dry-run']);
    expect(Object.keys(dryRun).sort()).toEqual([...COUNTS].sort());
    for (const key of COUNTS) expect(dryRun[key]).toEqual(expect.any(Number));
    expect(await cliJson(['purge', '--dry-run'])).toEqual(dryRun);
    expect(await counts()).toEqual(before);

    const text = await cli(['purge', '--dry-run']);
    expect(text, text.stderr).toMatchObject({ code: 0 });
    expect(text.stdout).toMatch(/^would remove:\n {2}messages\s+\d+\n {2}finished deliveries\s+\d+\n/);
    expect(text.stdout).toMatch(/^ {2}idempotency keys\s+\d+$/m);

    const purged = await cliJson<Record<string, unknown>>(['purge']);
    expect(Object.keys(purged).sort()).toEqual([...COUNTS].sort());
    expect((await cli(['purge'])).stdout).toMatch(/^removed:\n/);
  });
});

describe('pg-outbox discard', () => {
  it('finishes one dead letter as cancelled with --id and the rest with --all', async () => {
    for (let i = 0; i < 3; i++) await publish('discard.created', { i });
    const [first, ...rest] = await deadLetterIds('dead_discard', 3);
    expectFailure(await cli(['discard', 'dead_discard']), 2, /exactly one of --id and --all \[USAGE\]/);
    const one = await cli(['discard', 'dead_discard', '--id', first?.deliveryId ?? '']);
    expect(one, one.stderr).toMatchObject({
      code: 0,
      stdout: 'discarded 1 dead letter of subscription "dead_discard"\n',
    });
    const journey = await lib.journey(first?.messageId ?? '');
    expect(journey?.deliveries.find((d) => d.subscription === 'dead_discard')?.status).toBe('cancelled');
    expect((await lib.deadLetters('dead_discard')).map((d) => d.deliveryId)).toEqual(
      rest.map((d) => d.deliveryId),
    );
    expect(await cliJson(['discard', 'dead_discard', '--all'])).toEqual({ discarded: 2 });
    expect(await lib.deadLetters('dead_discard')).toEqual([]);
    expectFailure(await cli(['discard', 'nobody', '--all']), 5, /\[OUTBOX_UNKNOWN_SUBSCRIPTION\]/);
  });
});

describe('pg-outbox admin', () => {
  it('serves the admin page until SIGTERM; writes need the token', async () => {
    const child = spawn(process.execPath, cliArgs(['admin', '--port', '0'], SCHEMA), {
      env: { ...cliEnv(t.db.url), PG_OUTBOX_ADMIN_TOKEN: 'cli-admin-token' },
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    try {
      const url = await waitFor('the admin page listening', () => /at (http:\/\/\S+\/) /.exec(stderr)?.[1]);
      const overview = await fetch(url);
      expect(overview.status).toBe(200);
      const body = await overview.text();
      for (const name of ['idle', 'dead_list', 'history']) expect(body).toContain(`>${name}</a>`);
      const form = { method: 'POST', body: 'subscription=dead_list&all=1', redirect: 'manual' as const };
      const type = { 'content-type': 'application/x-www-form-urlencoded' };
      expect((await fetch(`${url}discard`, { ...form, headers: type })).status).toBe(403);
      const wrong = { ...type, authorization: 'Bearer not-the-token' };
      expect((await fetch(`${url}discard`, { ...form, headers: wrong })).status).toBe(403);
      expect((await lib.deadLetters('dead_list')).length).toBeGreaterThan(0);
      const right = { ...type, authorization: 'Bearer cli-admin-token' };
      expect((await fetch(`${url}replay`, { ...form, headers: right })).status).toBe(303);
      child.kill('SIGTERM');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      child.kill('SIGKILL');
    }
    expect(stderr).toMatch(/pg-outbox: admin page stopped\n$/);
  });
});

describe('pg-outbox relay', () => {
  it('relays published messages until SIGTERM, then stops gracefully with exit code 0', async () => {
    const schema = 'cli_relay';
    expect(await cli(['migrate'], { schema })).toMatchObject({ code: 0 });
    expect(await cli(['declare', 'waiting', '--topic', 'relay.created'], { schema })).toMatchObject({
      code: 0,
    });
    const publisher = t.outbox({ schema });

    const child = spawn(process.execPath, cliArgs(['relay'], schema), { env: cliEnv(t.db.url) });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    try {
      await waitFor('the relay started', () => stderr.includes('relay started'));
      await publisher.publish(t.pool, 'relay.created', { hello: 'relay' });
      await waitForStatus(
        'the message relayed to waiting',
        (s) => find(s, 'waiting')?.pending === 1,
        publisher,
      );
      child.kill('SIGTERM');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      child.kill('SIGKILL');
    }
    expect(stderr).toContain('pg-outbox: SIGTERM: stopping the relay\n');
    expect(stderr).toMatch(/pg-outbox: relay stopped\n$/);
  });
});

describe.skipIf(await brokerMissing('RabbitMQ', 'pg-outbox forward'))('pg-outbox forward', () => {
  it('forwards to RabbitMQ until SIGTERM, then stops with exit code 0; refuses two targets or none', async () => {
    const schema = 'cli_forward';
    expect(await cli(['migrate'], { schema })).toMatchObject({ code: 0 });
    const exchange = `pg-outbox-cli-${Date.now()}`;
    const broker = await amqp.connect(AMQP_URL);
    const channel = await broker.createChannel();
    // As the forwarder declares it (durable): a declaration with other settings would close its channel.
    await channel.assertExchange(exchange, 'topic', { durable: true });
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, exchange, 'cli.#');
    const received: string[] = [];
    await channel.consume(
      queue,
      (m) =>
        m && received.push(String((m.properties.headers as Record<string, unknown>)['x-outbox-message-id'])),
      { noAck: true },
    );

    const args = [
      'forward',
      'to-broker',
      '--topic',
      'cli.fwd.#',
      '--rabbitmq',
      AMQP_URL,
      '--exchange',
      exchange,
    ];
    const child = spawn(process.execPath, cliArgs(args, schema), { env: cliEnv(t.db.url) });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    try {
      await waitFor('the forwarder started', () => stderr.includes('forwarding "to-broker"'));
      const published = await t.outbox({ schema }).publishMany(
        t.pool,
        [1, 2, 3].map((i) => ({ topic: `cli.fwd.${i}`, payload: { i } })),
      );
      await waitFor('three on the queue', () => received.length === 3).catch((error: unknown) => {
        throw new Error(`forwarder stderr: ${stderr}`, { cause: error });
      });
      expect(received.sort()).toEqual(published.map((p) => p.id).sort());
      child.kill('SIGTERM');
      expect(await exited).toEqual({ code: 0, signal: null });
    } finally {
      child.kill('SIGKILL');
      await channel.deleteExchange(exchange);
      await broker.close();
    }
    expect(stderr).toMatch(/pg-outbox: forwarder stopped\n$/);

    expectFailure(
      await cli(['forward', 'x', '--topic', 'a.b'], { schema }),
      8,
      /exactly one of --rabbitmq <url> or --nats <servers> \[OUTBOX_INVALID_OPTION\]/,
    );
  });
});

describe('pg-outbox errors', () => {
  it('exits 4 with one line for a schema that was never migrated', async () => {
    const line =
      'pg-outbox: schema "cli_empty" has no pg-outbox tables: run pg-outbox migrate [OUTBOX_NOT_MIGRATED]\n';
    for (const args of [['status'], ['dead-letters', 'points'], ['show', '1'], ['relay']]) {
      const result = await cli(args, { schema: 'cli_empty' });
      expect(result, args.join(' ')).toMatchObject({ code: 4, stderr: line });
    }
  });

  it('exits 5 for an unknown subscription and 8 for input the API rejects', async () => {
    expectFailure(await cli(['dead-letters', 'nobody']), 5, /"nobody" .*\[OUTBOX_UNKNOWN_SUBSCRIPTION\]/);
    expectFailure(await cli(['replay', 'nobody', '--all']), 5, /\[OUTBOX_UNKNOWN_SUBSCRIPTION\]/);
    expectFailure(await cli(['declare', 'bad name', '--topic', 'a.b']), 8, /\[OUTBOX_INVALID_SUBSCRIPTION\]/);
    expectFailure(
      await cli(['--schema', 'bad-schema!', 'status'], { schema: null }),
      8,
      /\[OUTBOX_INVALID_SCHEMA\]/,
    );
  });

  it('exits 3 when it cannot connect: refused, malformed URL, no such database', async () => {
    const noDatabase = new URL(t.db.url);
    noDatabase.pathname = '/pg_outbox_no_such_database';
    const [refused, malformed, notPostgres, missing] = await Promise.all([
      cli(['status'], { url: 'postgres://postgres@127.0.0.1:1/test' }),
      cli(['status'], { url: 'not a url' }),
      cli(['status', '--database-url', 'mysql://root@127.0.0.1/test'], { url: null }),
      cli(['status'], { url: noDatabase.toString() }),
    ]);
    expectFailure(refused, 3, /cannot connect to the database: .*ECONNREFUSED.* \[ECONNREFUSED\]/);
    expectFailure(malformed, 3, /cannot parse the database URL.*\[ERR_INVALID_URL\]/);
    expectFailure(notPostgres, 3, /must start with postgres:\/\/.*\[ERR_INVALID_URL\]/);
    expectFailure(missing, 3, /does not exist \[3D000\]/);
  });

  it('exits 2 without a database URL, and for an unknown command or option or a bad argument', async () => {
    const results = await Promise.all([
      cli(['status'], { url: null }),
      cli(['bogus']),
      cli(['status', '--bogus']),
      cli(['show']),
      cli(['dead-letters', 'dead_list', '--limit', 'ten']),
      cli(['declare', 'orders']),
    ]);
    const [noUrl, command, option, argument, limit, topic] = results as CliResult[];
    expectFailure(noUrl as CliResult, 2, /set DATABASE_URL or pass --database-url .*\[USAGE\]/);
    expectFailure(command as CliResult, 2, /unknown command 'bogus' \[USAGE\]/);
    expectFailure(option as CliResult, 2, /unknown option '--bogus' \[USAGE\]/);
    expectFailure(argument as CliResult, 2, /missing required argument 'messageId' \[USAGE\]/);
    expectFailure(limit as CliResult, 2, /expected a positive integer \[USAGE\]/);
    expectFailure(topic as CliResult, 2, /required option '--topic <topic>' not specified \[USAGE\]/);
  });

  it('prints usage with --help for the program and every command, exiting 0', async () => {
    const program = await cli(['--help'], { url: null });
    expect(program).toMatchObject({ code: 0, stderr: '' });
    expect(program.stdout).toMatch(/^Usage: pg-outbox \[options\] \[command\]/);
    expect(program.stdout).toContain('Exit codes:');
    for (const code of [0, 1, 2, 3, 4, 5, 6, 7, 8])
      expect(program.stdout).toMatch(new RegExp(`^ {2}${code} {2}\\S`, 'm'));

    const commands = [
      'migrate',
      'declare',
      'status',
      'show',
      'cancel',
      'dead-letters',
      'replay',
      'purge',
      'relay',
      'discard',
      'admin',
    ];
    const helps = await Promise.all(
      [...commands.map((c) => [c]), ['relay', 'reset']].map((c) => cli([...c, '--help'], { url: null })),
    );
    helps.forEach((help, i) => {
      const name = i < commands.length ? commands[i] : 'relay reset';
      expect(help, name).toMatchObject({ code: 0, stderr: '' });
      expect(help.stdout).toMatch(new RegExp(`^Usage: pg-outbox ${name} `));
      expect(help.stdout).toContain('--database-url <url>');
    });
  });
});
