import type { ChildSpec } from './child-protocol.js';
import type { BenchContext } from './context.js';
import { plainMessages, publishAll } from './load.js';
import type { Node24 } from './node24.js';
import { processGroup } from './process-group.js';
import { int } from './table.js';
import { timedDrain } from './timed-drain.js';

/**
 * Connections that the pools of all consumer processes of one run may have together: the server's
 * max_connections (100) less the bench's own pool (4), the connections the systems open outside their pools
 * (pg-outbox's relay, LISTEN and lease connections), the superuser slots and whatever else shares the server.
 */
export const CONSUMER_CONNECTIONS = 80;

/** One row of the scale table: a system and how to start one of its consumer processes. */
export interface ScaleSystem {
  label: string;
  /** The Node its processes run on: the bench's own, or Node 24 for the libraries that need it. */
  node: Pick<Node24, 'path'>;
  spec: ChildSpec;
}

export interface ScaleRuns {
  /** msg/s of each repetition, by system and then by number of processes. */
  rates: Map<ScaleSystem, Map<number, number[]>>;
  /** Each system's settings per process, by number of processes (the pool cap may differ). */
  settings: Map<ScaleSystem, Map<number, string>>;
  /** Deliveries each process handled in the last repetition, by system and then by number of processes. */
  shares: Map<ScaleSystem, Map<number, number[]>>;
}

/** The pool cap of each process when `processes` share CONSUMER_CONNECTIONS. */
export const poolCap = (processes: number) => Math.floor(CONSUMER_CONNECTIONS / processes);

/**
 * The scale scenario's measurement: for each repetition, each number of processes and each system in turn (the
 * order rotated per repetition), `processes` new consumer processes on a fresh schema, `n` messages published
 * through the system's own publish call (1,000 per transaction), and the drain timed from the start call to the
 * last ack. The processes are closed after every drain, so no idle process of another system holds connections.
 */
export async function scaleRuns(
  ctx: BenchContext,
  systems: ScaleSystem[],
  processCounts: number[],
  n: number,
): Promise<ScaleRuns> {
  const rates = new Map(systems.map((s) => [s, new Map(processCounts.map((p) => [p, [] as number[]]))]));
  const settings = new Map(systems.map((s) => [s, new Map<number, string>()]));
  const shares = new Map(systems.map((s) => [s, new Map<number, number[]>()]));
  const messages = plainMessages(n);
  for (let rep = 1; rep <= ctx.config.reps; rep++) {
    const shift = (rep - 1) % systems.length;
    for (const processes of processCounts) {
      for (const system of [...systems.slice(shift), ...systems.slice(0, shift)]) {
        const spec: ChildSpec = { ...system.spec, poolCap: poolCap(processes) };
        const group = processGroup(system.node, spec, system.label, processes);
        try {
          await group.reset();
          settings.get(system)?.set(processes, group.settings);
          await publishAll(ctx.pool, group, messages, 1000);
          await group.prepare?.(n);
          const rate = n / ((await timedDrain(group, n)) / 1000);
          rates.get(system)?.get(processes)?.push(rate);
          const handled = group.handledByProcess();
          shares.get(system)?.set(processes, handled);
          ctx.log(
            `scale rep ${rep} ${system.label} × ${processes}: ${int(rate)} msg/s ` +
              `(handled per process: ${handled.map(int).join(', ')})`,
          );
        } finally {
          await group.close();
        }
      }
    }
  }
  return { rates, settings, shares };
}
