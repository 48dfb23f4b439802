import { execFileSync } from 'node:child_process';
import type { TestProject } from 'vitest/node';
import { startPostgres, type PostgresSource } from './postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Superuser URL of the run's server; test files create their own database with createTestDatabase. */
    databaseUrl: string;
    databaseSource: PostgresSource;
  }
}

/** One PostgreSQL server for the whole run, shared by the parallel test files. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The Prisma test's client is generated, not committed (`npm run typecheck` generates it too).
  execFileSync(process.execPath, ['test/fixtures/prisma/generate.mjs'], { stdio: 'inherit' });
  const postgres = await startPostgres();
  // One line, so a CI log shows which server the run used.
  console.log(`PostgreSQL for tests: ${postgres.source}`);
  project.provide('databaseUrl', postgres.url);
  project.provide('databaseSource', postgres.source);
  return () => postgres.stop();
}
