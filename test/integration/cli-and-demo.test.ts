import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupOutboxTest, type OutboxTestContext } from '../helpers/outbox.js';

const run = promisify(execFile);

/** Runs a TypeScript entry point in a child Node process, the way a user runs it. */
function tsx(script: string, args: string[], databaseUrl: string) {
  return run(process.execPath, ['--import', 'tsx', script, ...args], {
    env: { ...process.env, DATABASE_URL: databaseUrl, LOG_LEVEL: 'warn' },
    timeout: 60_000,
  });
}

describe('CLI and demo', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('migrates, declares, reports status and replays through the CLI', async () => {
    await tsx('src/cli/main.ts', ['--schema', 'cli_outbox', 'migrate'], t.db.url);
    await tsx(
      'src/cli/main.ts',
      ['--schema', 'cli_outbox', 'declare', 'points', '--topic', 'order.paid'],
      t.db.url,
    );
    const status = await tsx('src/cli/main.ts', ['--schema', 'cli_outbox', 'status'], t.db.url);
    expect(JSON.parse(status.stdout)).toMatchObject({
      subscriptions: [{ name: 'points', topics: ['order.paid'], pending: 0, dead: 0 }],
      relay: { backlog: 0 },
    });
    const replay = await tsx('src/cli/main.ts', ['--schema', 'cli_outbox', 'replay', 'points'], t.db.url);
    expect(JSON.parse(replay.stdout)).toEqual({ replayed: 0 });
    await expect(
      tsx('src/cli/main.ts', ['--schema', 'cli_outbox', 'replay', 'nobody'], t.db.url),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('OUTBOX_UNKNOWN_SUBSCRIPTION') as unknown,
    });
  });

  it('runs the demo: rolled-back order never delivered, points awarded once per order', async () => {
    const { stdout } = await tsx('examples/demo.ts', [], t.db.url);
    expect(stdout).toContain('points: ada=165, grace=80');
    expect(stdout).not.toMatch(/\[points\]\s+order 4/);
    expect(stdout.match(/\[notifications\]/g)).toHaveLength(3);
    expect(stdout).toContain('subscription points: pending 0, in flight 0, dead 0');
  });
});
