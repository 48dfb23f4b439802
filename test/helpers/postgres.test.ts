import { access } from 'node:fs/promises';
import pg from 'pg';
import { describe, expect, inject, it } from 'vitest';
import { createTestDatabase, isDockerAvailable, startEmbeddedPostgres, startPostgres } from './postgres.js';

async function query(url: string, text: string, params: unknown[] = []): Promise<unknown[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Record<string, unknown>>(text, params)).rows;
  } finally {
    await client.end();
  }
}

describe('the server from globalSetup', () => {
  it('answers SELECT 1 at the injected URL', async () => {
    expect(await query(inject('databaseUrl'), 'SELECT 1 AS one')).toEqual([{ one: 1 }]);
  });

  it('comes from DATABASE_URL exactly when it is set', () => {
    expect(inject('databaseSource') === 'env').toBe(Boolean(process.env['DATABASE_URL']));
  });
});

describe('startPostgres', () => {
  it('returns a working server and stops what it started', async () => {
    const server = await startPostgres();
    try {
      expect(await query(server.url, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);
      if (process.env['DATABASE_URL'])
        expect(server).toMatchObject({ source: 'env', url: process.env['DATABASE_URL'] });
    } finally {
      await server.stop();
    }
    if (server.source === 'embedded') {
      await expect(query(server.url, 'SELECT 1')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    }
  });

  it('gives up on Docker quickly when no engine answers', async () => {
    const started = performance.now();
    await isDockerAvailable();
    // Three candidate sockets with a 1 s deadline each at worst.
    expect(performance.now() - started).toBeLessThan(3_500);
  });
});

describe('createTestDatabase', () => {
  it('creates isolated databases that drop() removes despite open connections', async () => {
    const baseUrl = inject('databaseUrl');
    const a = await createTestDatabase(baseUrl);
    const b = await createTestDatabase(baseUrl);
    try {
      expect(a.name).not.toBe(b.name);
      expect(await query(a.url, 'SELECT current_database() AS db')).toEqual([{ db: a.name }]);
      await query(a.url, 'CREATE TABLE only_in_a (id int)');
      expect(await query(b.url, "SELECT to_regclass('only_in_a') AS t")).toEqual([{ t: null }]);

      const leaked = new pg.Client({ connectionString: a.url });
      leaked.on('error', () => undefined);
      const leakedEnded = new Promise((resolve) => leaked.once('end', resolve));
      await leaked.connect();
      await a.drop();
      await leakedEnded;

      const remaining = 'SELECT count(*)::int AS n FROM pg_database WHERE datname = $1';
      expect(await query(baseUrl, remaining, [a.name])).toEqual([{ n: 0 }]);
      await expect(query(a.url, 'SELECT 1')).rejects.toMatchObject({ code: '3D000' });
    } finally {
      await a.drop();
      await b.drop();
    }
  });
});

describe('startEmbeddedPostgres', () => {
  it('keeps port and data across stopServer/startServer, and stop() removes the data directory', async () => {
    const server = await startEmbeddedPostgres();
    try {
      expect(server.url).toBe(`postgres://postgres@127.0.0.1:${server.port}/postgres`);
      await query(server.url, 'CREATE TABLE kept (v text)');
      await query(server.url, "INSERT INTO kept VALUES ('before restart')");

      await server.stopServer();
      expect(server.isRunning()).toBe(false);
      await expect(query(server.url, 'SELECT 1')).rejects.toMatchObject({ code: 'ECONNREFUSED' });

      await server.startServer();
      expect(server.isRunning()).toBe(true);
      expect(await query(server.url, 'SELECT v FROM kept')).toEqual([{ v: 'before restart' }]);
    } finally {
      await server.stop();
    }
    await expect(access(server.dataDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('recovers committed data after killServer', async () => {
    const server = await startEmbeddedPostgres();
    try {
      await query(server.url, 'CREATE TABLE committed (n int)');
      await query(server.url, 'INSERT INTO committed SELECT generate_series(1, 1000)');

      const connected = new pg.Client({ connectionString: server.url });
      // pg emits more than one 'error' for a lost connection; all need a listener.
      const lost = new Promise((resolve) => connected.on('error', resolve));
      await connected.connect();
      await server.killServer();
      await lost;

      await server.startServer();
      expect(await query(server.url, 'SELECT count(*)::int AS n FROM committed')).toEqual([{ n: 1000 }]);
    } finally {
      await server.stop();
    }
  });
});
