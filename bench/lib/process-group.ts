import type { ChildSpec } from './child-protocol.js';
import { childSystem } from './child-system.js';
import type { Node24 } from './node24.js';
import type { QueueSystem } from './system.js';

export interface ProcessGroup extends QueueSystem {
  /** Deliveries each process has handled since the last start(), in process order. */
  handledByProcess(): number[];
}

/**
 * One system consumed by `processes` OS processes on one schema, behind QueueSystem, so that publishAll() and
 * timedDrain() treat it as they treat one process. Each process is a child host (child-host.ts) running the
 * system's own code with its own pools; all of them hand their handler calls to this process over IPC.
 *
 * The first process also does the rest: publish (its statements run on the caller's client), prepare and
 * unacked. Every process runs reset(), which is what builds its instance (pg-boss's, pg-outbox's Outbox) and also
 * drops and recreates the schema: they run one after another, the first process last, so the schema left is the
 * one it made and the others' instances find it by name, as a process that joins a deployed queue would.
 */
export function processGroup(
  node: Pick<Node24, 'path'>,
  spec: ChildSpec,
  label: string,
  processes: number,
): ProcessGroup {
  const children = Array.from({ length: processes }, (_, i) =>
    childSystem(node, spec, `${label}, process ${i + 1} of ${processes}`),
  );
  const first = children[0];
  if (first === undefined) throw new Error(`${label}: a process group needs at least one process`);
  let handled = children.map(() => 0);

  return {
    label,
    get settings() {
      return first.settings;
    },
    get publishPath() {
      return first.publishPath;
    },
    async reset() {
      for (const child of [...children].reverse()) await child.reset();
    },
    publish: (client, messages) => first.publish(client, messages),
    async prepare(expected) {
      await first.prepare?.(expected);
    },
    // Each child sends its start call as soon as it is made: the processes are told to start together.
    async start(handler) {
      handled = children.map(() => 0);
      await Promise.all(
        children.map((child, i) =>
          child.start((payload, at) => {
            handled[i] = (handled[i] ?? 0) + 1;
            handler(payload, at);
          }),
        ),
      );
    },
    async stop() {
      await Promise.all(children.map((child) => child.stop()));
    },
    unacked: () => first.unacked(),
    handledByProcess: () => [...handled],
    async close() {
      for (const child of children) await child.close();
    },
  };
}
