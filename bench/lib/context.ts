import type pg from 'pg';
import type { BenchConfig } from './config.js';
import type { ScenarioReport } from './report.js';

/** What run.ts hands every scenario. */
export interface BenchContext {
  /** Connection URL of the server under test. */
  url: string;
  /** A small pool for setup and loading; each system brings its own pools for the measured work. */
  pool: pg.Pool;
  config: BenchConfig;
  /** Progress lines on stderr, so stdout carries only the tables. */
  log: (line: string) => void;
}

export type Scenario = (ctx: BenchContext) => Promise<ScenarioReport>;
