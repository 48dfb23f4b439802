import type pg from 'pg';

/**
 * Server-wide counters read before and after a stretch of work: WAL written, shared buffers that client backends
 * had to write out themselves to make room (the working set outgrew shared_buffers), blocks of one schema's tables
 * read into shared buffers, and checkpoints. On a shared server the first, second and last include everyone's
 * work. The views moved between versions: pg_stat_io from 16, pg_stat_checkpointer from 17.
 */
export interface ServerCounters {
  walBytes: number;
  backendWrites: number;
  blocksRead: number;
  checkpoints: number;
}

export async function readServerCounters(pool: pg.Pool, schema: string): Promise<ServerCounters> {
  const { rows: version } = await pool.query<{ v: string }>(
    `SELECT current_setting('server_version_num') AS v`,
  );
  const v = Number(version[0]?.v ?? 0);
  const backendWrites =
    v >= 160000
      ? `(SELECT coalesce(sum(writes), 0) FROM pg_stat_io WHERE backend_type = 'client backend')`
      : '(SELECT buffers_backend FROM pg_stat_bgwriter)';
  const checkpoints =
    v >= 170000
      ? '(SELECT num_timed + num_requested FROM pg_stat_checkpointer)'
      : '(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)';
  const { rows } = await pool.query<Record<keyof ServerCounters, string>>(
    `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint::text AS "walBytes",
            ${backendWrites}::bigint::text AS "backendWrites",
            (SELECT coalesce(sum(heap_blks_read + coalesce(idx_blks_read, 0)), 0)
             FROM pg_statio_all_tables WHERE schemaname = $1::text)::bigint::text AS "blocksRead",
            ${checkpoints}::bigint::text AS checkpoints`,
    [schema],
  );
  const row = rows[0];
  return {
    walBytes: Number(row?.walBytes ?? NaN),
    backendWrites: Number(row?.backendWrites ?? NaN),
    blocksRead: Number(row?.blocksRead ?? NaN),
    checkpoints: Number(row?.checkpoints ?? NaN),
  };
}

export function counterDelta(before: ServerCounters, after: ServerCounters): ServerCounters {
  return {
    walBytes: after.walBytes - before.walBytes,
    backendWrites: after.backendWrites - before.backendWrites,
    blocksRead: after.blocksRead - before.blocksRead,
    checkpoints: after.checkpoints - before.checkpoints,
  };
}
