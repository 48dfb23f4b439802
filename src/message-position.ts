import type { SweepStart } from './sql/retention.js';

/**
 * Passes of the maintenance loop from one sweep of the kept messages to the next (see MessagePosition). A message
 * kept while a subscription still had work for it goes at most this many passes after that work finished: 10
 * minutes at the default maintenanceIntervalMs, negligible beside a retention of days. The passes in between read
 * only the messages published since the pass before, not the whole kept range again (900,000 messages kept behind
 * a paused subscription: 1.3 s a pass to re-read on the 2-core test machine, against 1 ms for a pass that doesn't).
 */
export const SWEEP_EVERY = 10;

/**
 * The maintenance loop's place in the messages, kept in memory from one pass to the next (startPosition() for a
 * new loop). Ids are positions: a pass looks at the messages after them.
 *
 * An ordinary pass starts at the frontier. Every SWEEP_EVERY-th pass is a sweep: it starts at lowestKept and
 * re-reads the kept range up to the frontier, removing what became removable, then goes on like an ordinary pass.
 *
 * The frontier stops before the first message a pass found too young or not yet fanned out by the relay, so the
 * next pass looks at it again. A message can still commit below the frontier after a pass went by (its transaction
 * drew the id, and ran on while later messages committed, aged and were passed): a sweep finds it.
 *
 * Every message at or below lowestKept is gone. A sweep's lowest message left in place is that bound only if no
 * message it could not see yet (of a transaction still running) lies below it. A message hidden from one of the
 * sweep's batches belongs to a transaction that was running then. If the horizon noted at this sweep's start (all
 * older transactions had ended) is at or above the xid the previous sweep took at its start, that transaction took
 * its xid after the previous start, so it drew its ids after every id visible then (the messages_xid_first trigger
 * takes the xid before the id is drawn): above that start's maxId. So the bound moves up to the lower of the two;
 * while a transaction older than the previous sweep still runs, it stays where it was.
 */
export interface MessagePosition {
  /** Every message at or below this id is gone: sweeps start here. */
  lowestKept: string;
  /** Every message at or below it was looked at once it was old enough and fanned out: ordinary passes start here. */
  frontier: string;
  /** Passes to go before the next sweep; 0: the next pass sweeps. */
  untilSweep: number;
  /** The pass under way, when the last one ended on a bound. */
  pass: PassProgress | null;
  /** What the last sweep noted at its start. */
  lastSweep: SweepStart | null;
}

/** A pass over the messages, which may take several runs of the loop when a bound cuts them short. */
export interface PassProgress {
  /** Noted at the start of a sweep; null: an ordinary pass. */
  sweep: SweepStart | null;
  /** The last message id looked at: the next batch starts after it. */
  cursor: string;
  /** Before the first message above the frontier found too young or not fanned out (null: none so far). */
  unsettledAfter: string | null;
  /** Before the lowest message looked at and left in place (null: none so far). */
  remainingAfter: string | null;
}

/** The lower of two positions; null is none. */
export const lowerId = (a: string | null, b: string | null) =>
  a === null || (b !== null && BigInt(b) < BigInt(a)) ? b : a;
const higherId = (a: string, b: string) => (BigInt(b) > BigInt(a) ? b : a);

/** A new loop's position: its first pass sweeps from the beginning. */
export function startPosition(): MessagePosition {
  return { lowestKept: '0', frontier: '0', untilSweep: 0, pass: null, lastSweep: null };
}

/** The next pass, from `position`: a sweep (with what it noted at its start) or an ordinary pass (null). */
export function beginPass(position: MessagePosition, sweep: SweepStart | null): PassProgress {
  const cursor = sweep === null ? position.frontier : position.lowestKept;
  return { sweep, cursor, unsettledAfter: null, remainingAfter: null };
}

/** The pass after some more batches: `walk` tells what they found. */
export function advancePass(pass: PassProgress, walk: Omit<PassProgress, 'sweep'>): PassProgress {
  return {
    sweep: pass.sweep,
    cursor: walk.cursor,
    unsettledAfter: pass.unsettledAfter ?? walk.unsettledAfter,
    remainingAfter: lowerId(pass.remainingAfter, walk.remainingAfter),
  };
}

/** Where sweeps start after this one, which started with `sweep` (see MessagePosition). */
function lowestKeptAfter(position: MessagePosition, pass: PassProgress, sweep: SweepStart): string {
  const previous = position.lastSweep;
  if (previous === null || BigInt(sweep.horizon) < BigInt(previous.xid)) return position.lowestKept;
  const gone = lowerId(pass.remainingAfter ?? pass.cursor, previous.maxId) ?? previous.maxId;
  return higherId(position.lowestKept, gone);
}

/** The position after a pass that went to its end. */
export function finishPass(position: MessagePosition, pass: PassProgress): MessagePosition {
  const frontier = pass.unsettledAfter ?? higherId(position.frontier, pass.cursor);
  if (pass.sweep === null) return { ...position, frontier, untilSweep: position.untilSweep - 1, pass: null };
  return {
    lowestKept: lowestKeptAfter(position, pass, pass.sweep),
    frontier,
    untilSweep: SWEEP_EVERY - 1,
    pass: null,
    lastSweep: pass.sweep,
  };
}
