import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
import { createOutbox } from '../../src/index.js';
import { testLogger } from './outbox.js';

const execFileAsync = promisify(execFile);

/** Every table of the outbox schema, parents before children (no foreign keys, but a stable order). */
const TABLES = [
  'subscriptions',
  'messages',
  'deliveries',
  'completed_deliveries',
  'dead_deliveries',
  'cancellations',
  'processed',
  'relay_state',
];

async function serverMajor(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`);
    return Math.floor(Number(rows[0]?.v) / 10_000);
  } finally {
    await client.end();
  }
}

async function pgDumpMajor(): Promise<number | null> {
  try {
    const { stdout } = await execFileAsync('pg_dump', ['--version']);
    const match = /(\d+)\.\d+/.exec(stdout);
    return match === null ? null : Number(match[1]);
  } catch {
    return null;
  }
}

/** pg_dump of one schema piped into psql, as an operator moving a database would do it. */
async function dumpWithPgDump(sourceUrl: string, targetUrl: string, schema: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const dump = spawn('pg_dump', ['--no-owner', '--no-privileges', '--schema', schema, sourceUrl], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const restore = spawn('psql', ['--quiet', '--set', 'ON_ERROR_STOP=1', targetUrl], {
      stdio: ['pipe', 'ignore', 'inherit'],
    });
    dump.stdout.pipe(restore.stdin);
    let pending = 2;
    const done = (what: string) => (code: number | null) => {
      if (code !== 0) reject(new Error(`${what} exited with ${code}`));
      else if (--pending === 0) resolve();
    };
    dump.on('exit', done('pg_dump'));
    restore.on('exit', done('psql'));
  });
}

/**
 * What pg_dump does, for a source server newer than the pg_dump at hand: the schema from the same migrations,
 * every row (identity values kept, triggers firing as they do under COPY), the sequences where they were.
 */
async function dumpByCopy(sourceUrl: string, targetUrl: string, schema: string): Promise<void> {
  const source = new pg.Pool({ connectionString: sourceUrl, max: 1 });
  const target = new pg.Pool({ connectionString: targetUrl, max: 1 });
  try {
    await createOutbox({ pool: target, schema, logger: testLogger }).migrate();
    await target.query(`DELETE FROM "${schema}".relay_state`);
    for (const table of TABLES) {
      const { rows } = await source.query<{ rows: unknown }>(
        `SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') AS rows FROM "${schema}".${table} t`,
      );
      await target.query(
        `INSERT INTO "${schema}".${table} OVERRIDING SYSTEM VALUE
         SELECT * FROM jsonb_populate_recordset(NULL::"${schema}".${table}, $1::jsonb)`,
        [JSON.stringify(rows[0]?.rows ?? [])],
      );
    }
    const { rows: sequences } = await source.query<{ seq: string; last: string | null }>(
      `SELECT schemaname || '.' || sequencename AS seq, last_value::text AS last
       FROM pg_sequences WHERE schemaname = $1`,
      [schema],
    );
    for (const { seq, last } of sequences) {
      if (last !== null) await target.query(`SELECT setval($1::regclass, $2::bigint)`, [seq, last]);
    }
  } finally {
    await Promise.all([source.end(), target.end()]);
  }
}

/** Copies an outbox schema into another database the way a dump and restore does; says which way it took. */
export async function dumpAndRestore(
  sourceUrl: string,
  targetUrl: string,
  schema = 'outbox',
): Promise<'pg_dump' | 'copy'> {
  // PG_OUTBOX_TEST_DUMP=copy takes the copy path even where pg_dump could do it.
  const dumpMajor = process.env['PG_OUTBOX_TEST_DUMP'] === 'copy' ? null : await pgDumpMajor();
  if (dumpMajor !== null && dumpMajor >= (await serverMajor(sourceUrl))) {
    await dumpWithPgDump(sourceUrl, targetUrl, schema);
    return 'pg_dump';
  }
  await dumpByCopy(sourceUrl, targetUrl, schema);
  return 'copy';
}
