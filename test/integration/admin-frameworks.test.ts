import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdminRequestHandler, Outbox } from '../../src/index.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

// The admin page is a plain node:http handler; these mount it in Express and in Fastify under /outbox, next to
// routes of the application, and use it through them: pages, links under the prefix, and a write.

const TOKEN = 'framework-admin-token';

async function listening(server: Server): Promise<string> {
  await new Promise<void>((resolve) => (server.listening ? resolve() : server.once('listening', resolve)));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function expressApp(handler: AdminRequestHandler): Server {
  const app = express();
  app.get('/health', (_req, res) => {
    res.send('app');
  });
  // Express takes /outbox off req.url; the page's links carry basePath.
  app.use('/outbox', (req, res) => handler(req, res));
  return app.listen(0, '127.0.0.1');
}

async function fastifyApp(handler: AdminRequestHandler): Promise<FastifyInstance> {
  const app = Fastify();
  app.get('/health', () => 'app');
  // Leave form posts unread for the handler, which reads the body itself.
  app.addContentTypeParser('application/x-www-form-urlencoded', (_req, _body, done) => done(null, undefined));
  const admin = (
    request: { raw: Parameters<AdminRequestHandler>[0] },
    reply: { hijack(): void; raw: Parameters<AdminRequestHandler>[1] },
  ) => {
    reply.hijack();
    handler(request.raw, reply.raw);
  };
  app.all('/outbox', admin);
  app.all('/outbox/*', admin);
  await app.listen({ port: 0, host: '127.0.0.1' });
  return app;
}

describe('the admin page inside Express and Fastify', () => {
  let t: OutboxTestContext;
  let o: Outbox;
  const healed = new Set<string>();

  beforeAll(async () => {
    t = await setupOutboxTest();
    o = t.outbox({ relay: { pollIntervalMs: 5 } });
    o.subscribe('framework', { topics: ['fw.job'], maxAttempts: 1, pollIntervalMs: 20 }, (message) => {
      if (!healed.has(message.id)) throw new Error('not yet');
    });
    await o.start();
  });
  afterAll(async () => t.close());

  const cases = [
    [
      'Express',
      async (h: AdminRequestHandler) => {
        const server = expressApp(h);
        return {
          base: await listening(server),
          close: () => new Promise<void>((r) => server.close(() => r())),
        };
      },
    ],
    [
      'Fastify',
      async (h: AdminRequestHandler) => {
        const app = await fastifyApp(h);
        return {
          base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
          close: () => app.close(),
        };
      },
    ],
  ] as const;

  for (const [name, mount] of cases) {
    it(`${name}: serves the pages under /outbox beside the app's routes, and replays with the token`, async () => {
      const { id } = await o.publish(t.pool, 'fw.job', { framework: name });
      const dead = await waitFor('the message dead', async () =>
        (await o.deadLetters('framework')).find((d) => d.messageId === id),
      );
      const app = await mount(o.adminHandler({ basePath: '/outbox', token: TOKEN }));
      try {
        expect(await (await fetch(`${app.base}/health`)).text()).toBe('app');
        const overview = await fetch(`${app.base}/outbox/`);
        expect(overview.status).toBe(200);
        expect(await overview.text()).toContain('href="/outbox/dead-letters?subscription=framework"');
        const page = await (await fetch(`${app.base}/outbox/dead-letters?subscription=framework`)).text();
        expect(page).toContain(`href="/outbox/message?id=${id}"`);
        expect((await fetch(`${app.base}/outbox/message?id=${id}`)).status).toBe(200);

        healed.add(id);
        const form = `subscription=framework&id=${dead.deliveryId}`;
        const headers = { 'content-type': 'application/x-www-form-urlencoded' };
        const refused = await fetch(`${app.base}/outbox/replay`, {
          method: 'POST',
          body: form,
          headers,
          redirect: 'manual',
        });
        expect(refused.status).toBe(403);
        const replayed = await fetch(`${app.base}/outbox/replay`, {
          method: 'POST',
          body: form,
          headers: { ...headers, authorization: `Bearer ${TOKEN}` },
          redirect: 'manual',
        });
        expect(replayed.status).toBe(303);
        expect(replayed.headers.get('location')).toMatch(
          /^\/outbox\/dead-letters\?subscription=framework&notice=/,
        );
        await waitFor('the replayed message done', async () => {
          const journey = await o.journey(id);
          return journey?.deliveries[0]?.status === 'done';
        });
      } finally {
        await app.close();
      }
    });
  }
});
