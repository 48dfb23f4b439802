import type pg from 'pg';
import type { BenchConfig } from './config.js';
import type { Node24 } from './node24.js';
import type { ScenarioReport } from './report.js';

/** What run.ts hands every scenario. */
export interface BenchContext {
  /** Connection URL of the server under test. */
  url: string;
  /** A small pool for setup and loading; each system brings its own pools for the measured work. */
  pool: pg.Pool;
  config: BenchConfig;
  /**
   * The Node for the peers that need 22+ (pg-boss 12, graphile-worker 0.18), run in child processes; null when
   * none was found (those peers are skipped) or when no scenario of this run has them.
   */
  node24: Node24 | null;
  /** Progress lines on stderr, so stdout carries only the tables. */
  log: (line: string) => void;
}

export type Scenario = (ctx: BenchContext) => Promise<ScenarioReport>;
