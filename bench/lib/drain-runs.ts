import type { BenchContext } from './context.js';
import { plainMessages, publishAll } from './load.js';
import type { QueueSystem } from './system.js';
import { int } from './table.js';
import { timedDrain } from './timed-drain.js';

/**
 * Scenario 2's measurement: for each repetition and each system in turn (the order rotated per repetition), a fresh schema, `n` waiting messages
 * published in batches of 1,000, and the drain timed until every one is acked. Returns each system's msg/s per
 * repetition, and closes the systems (unless `close: false`: the caller runs them again).
 */
export async function drainRuns(
  ctx: BenchContext,
  scenario: string,
  systems: QueueSystem[],
  n: number,
  options: { close?: boolean } = {},
): Promise<Map<QueueSystem, number[]>> {
  const runs = new Map<QueueSystem, number[]>(systems.map((s) => [s, []]));
  const messages = plainMessages(n);
  try {
    for (let rep = 1; rep <= ctx.config.reps; rep++) {
      // Each repetition starts one system further on, so that no system always runs first or after the same one.
      const shift = (rep - 1) % systems.length;
      for (const system of [...systems.slice(shift), ...systems.slice(0, shift)]) {
        await system.reset();
        await publishAll(ctx.pool, system, messages, 1000);
        await system.prepare?.(n);
        const rate = n / ((await timedDrain(system, n)) / 1000);
        runs.get(system)?.push(rate);
        ctx.log(`${scenario} rep ${rep} ${system.label}: ${int(rate)} msg/s`);
      }
    }
  } finally {
    if (options.close ?? true) for (const system of systems) await system.close();
  }
  return runs;
}
