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

// The CLI's own tests are in cli.test.ts.
describe('demo', () => {
  let t: OutboxTestContext;
  beforeAll(async () => {
    t = await setupOutboxTest();
  });
  afterAll(async () => t.close());

  it('runs the demo: rolled-back order never delivered, points awarded once per order', async () => {
    const { stdout } = await tsx('examples/demo.ts', [], t.db.url);
    expect(stdout).toContain('points: ada=165, grace=80');
    expect(stdout).not.toMatch(/\[points\]\s+order 4/);
    expect(stdout.match(/\[notifications\]/g)).toHaveLength(3);
    expect(stdout).toContain('subscription points: pending 0, in flight 0, dead 0');
  });
});
