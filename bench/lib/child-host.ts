/**
 * The child side of ChildSystem: started as `<node> --import tsx bench/lib/child-host.ts` with an IPC channel, it
 * builds the system from the same code as the in-process versions (pg-boss.ts, graphile-worker.ts, ours.ts), on
 * Node 24 for the libraries that need it, then answers the parent's calls (child-protocol.ts). Exits when the
 * parent closes the system or goes away.
 */
import pg from 'pg';
import { preciseNow } from './db.js';
import {
  fromWireError,
  toWireError,
  type Call,
  type ChildSpec,
  type FromChild,
  type ToChild,
  type WireDelivery,
} from './child-protocol.js';
import type { PeerSystem, SqlClient } from './system.js';

/** pg-pool's size when a pool is made without `max`. */
const PG_POOL_DEFAULT_MAX = 10;

function send(message: FromChild): void {
  process.send?.(message);
}

/**
 * Caps every pool made through `pg.Pool` from here on at `cap` connections (pg-outbox's, pg-boss's and
 * graphile-worker's pools all are: db.ts's createPool and pg-boss read `pg.Pool` when they make one), and
 * returns the sizes it cut while the system is built (pools made later, pg-boss's own in reset(), are capped all
 * the same). The systems take no pool size from outside; they size their pools for one process.
 */
function capPools(cap: number): string[] {
  const cut: string[] = [];
  const Uncapped = pg.Pool;
  class CappedPool extends Uncapped {
    constructor(config: pg.PoolConfig = {}) {
      const max = config.max ?? PG_POOL_DEFAULT_MAX;
      if (max > cap) cut.push(`${max} to ${cap}`);
      super({ ...config, max: Math.min(max, cap) });
    }
  }
  pg.Pool = CappedPool;
  return cut;
}

async function createSystem(spec: ChildSpec): Promise<PeerSystem> {
  // Imported here, so that a child loads only the library it hosts.
  switch (spec.system) {
    case 'pg-outbox': {
      const { oursSystem } = await import('./ours.js');
      // Its publish() hands the client to outbox.publishMany(), which takes any client with query(text, values):
      // the parent's stand-in too.
      return oursSystem(spec.options);
    }
    case 'pg-boss 10':
    case 'pg-boss 12': {
      const [{ pgBossSystem }, library] = await Promise.all([
        import('./pg-boss.js'),
        spec.system === 'pg-boss 10'
          ? import('./pg-boss-10.js').then((m) => m.pgBoss10)
          : import('./pg-boss-12.js').then((m) => m.pgBoss12),
      ]);
      return pgBossSystem(library, spec.options);
    }
    case 'graphile-worker 0.17': {
      const [{ graphileWorkerSystem }, { graphileWorker017 }] = await Promise.all([
        import('./graphile-worker.js'),
        import('./graphile-worker-0.17.js'),
      ]);
      return graphileWorkerSystem(graphileWorker017, spec.options);
    }
    case 'graphile-worker 0.18': {
      const [{ graphileWorkerSystem }, { graphileWorker018 }] = await Promise.all([
        import('./graphile-worker.js'),
        import('./graphile-worker-0.18.js'),
      ]);
      return graphileWorkerSystem(graphileWorker018, spec.options);
    }
  }
}

function host(system: PeerSystem): (message: ToChild) => void {
  const queries = new Map<number, { resolve: (rows: unknown[]) => void; reject: (error: Error) => void }>();
  let nextQuery = 0;
  let pending: WireDelivery[] = [];
  // Deliveries go out in batches, one per turn of the event loop: pg-boss hands over up to 2,000 jobs at once.
  const flush = () => {
    if (pending.length === 0) return;
    send({ type: 'deliveries', batch: pending });
    pending = [];
  };
  // Queries go out as they are made: the IPC channel keeps their order, and the parent runs them in that order.
  const remoteClient = (call: number): SqlClient => ({
    pipelines: true,
    query: (text, values = []) =>
      new Promise((resolve, reject) => {
        const id = nextQuery++;
        queries.set(id, { resolve: (rows) => resolve({ rows }), reject });
        send({ type: 'query', id, call, text, values });
      }),
  });
  const perform = async (id: number, call: Call): Promise<number | void> => {
    switch (call.method) {
      case 'reset':
        return system.reset();
      case 'publish':
        return system.publish(
          remoteClient(id),
          call.messages.map((m) => ({
            payload: m.payload,
            ...(m.deliverAtMs === undefined ? {} : { deliverAt: new Date(m.deliverAtMs) }),
          })),
        );
      case 'prepare':
        return system.prepare?.(call.expected);
      case 'start':
        return system.start((payload) => {
          if (pending.length === 0) setImmediate(flush);
          pending.push([payload, preciseNow(), Date.now()]);
        });
      case 'stop':
        return system.stop();
      case 'unacked':
        return system.unacked();
      case 'close':
        return system.close();
    }
  };

  return (message) => {
    if (message.type === 'query-result') {
      const query = queries.get(message.id);
      queries.delete(message.id);
      if (message.error) query?.reject(fromWireError(message.error));
      else query?.resolve(message.rows ?? []);
      return;
    }
    if (message.type !== 'call') return;
    const { id } = message;
    perform(id, message).then(
      (value) => {
        flush();
        send({ type: 'result', id, ...(typeof value === 'number' ? { value } : {}) });
        if (message.method === 'close') process.disconnect();
      },
      (error: unknown) => {
        flush();
        send({ type: 'result', id, error: toWireError(error) });
      },
    );
  };
}

// Without its parent the child has nobody to answer: its system is closed by the parent, or by the exit here.
process.on('disconnect', () => process.exit(0));
process.once('message', (init: ToChild) => {
  if (init.type !== 'init') throw new Error(`child-host: expected init, got ${init.type}`);
  const { poolCap } = init.spec;
  const cut = poolCap === undefined ? [] : capPools(poolCap);
  createSystem(init.spec).then(
    (system) => {
      process.on('message', host(system));
      send({
        type: 'ready',
        settings:
          system.settings + (cut.length > 0 ? `; pool max cut from ${cut.join(', ')} in this process` : ''),
        publishPath: system.publishPath,
        node: process.version,
      });
    },
    (error: unknown) => {
      console.error(`[bench] child-host: ${init.spec.system} did not start:`, error);
      process.exit(1);
    },
  );
});
