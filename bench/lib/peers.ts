import { graphileWorkerSystem } from './graphile-worker.js';
import { oursSystem } from './ours.js';
import { pgBossSystem } from './pg-boss.js';
import type { QueueSystem } from './system.js';

/**
 * The three systems of the latency scenarios, each on its default wake-up path: pg-outbox with default options
 * (relay polling every 20 ms, NOTIFY to consumers), pg-boss polling at its 0.5 s minimum, graphile-worker on
 * LISTEN/NOTIFY (and its 100 ms poll for jobs that become due later).
 */
export function latencySystems(url: string): [QueueSystem, QueueSystem, QueueSystem] {
  return [
    oursSystem({ url, label: 'pg-outbox' }),
    pgBossSystem({ url, label: 'pg-boss' }),
    graphileWorkerSystem({ url }),
  ];
}
