import { graphileWorker018System, pgBoss12System } from './child-system.js';
import { graphileWorkerSystem } from './graphile-worker.js';
import { graphileWorker017 } from './graphile-worker-0.17.js';
import type { Node24 } from './node24.js';
import { oursSystem } from './ours.js';
import { pgBossSystem } from './pg-boss.js';
import { pgBoss10 } from './pg-boss-10.js';
import type { QueueSystem } from './system.js';

/**
 * The systems of the latency scenarios, each on its default wake-up path: pg-outbox with default options (relay
 * polling every 20 ms, NOTIFY to consumers), pg-boss 10 polling at its 0.5 s minimum, graphile-worker 0.17 on
 * LISTEN/NOTIFY (and its 100 ms poll for jobs that become due later); then, when a Node 24 was found, pg-boss 12
 * (LISTEN/NOTIFY for jobs due at once, 0.5 s polls for the others) and graphile-worker 0.18 in child processes.
 */
export function latencySystems(url: string, node24: Node24 | null): [QueueSystem, ...QueueSystem[]] {
  return [
    oursSystem({ url, label: 'pg-outbox' }),
    pgBossSystem(pgBoss10, { url }),
    graphileWorkerSystem(graphileWorker017, { url }),
    ...(node24 === null ? [] : [pgBoss12System(node24, { url }), graphileWorker018System(node24, { url })]),
  ];
}
