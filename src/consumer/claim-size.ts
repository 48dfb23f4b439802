/** Completions older than this no longer count towards the rate. */
const WINDOW_MS = 500;
/** The shortest time a rate is measured over, so the first few completions do not read as a huge rate. */
const MIN_ELAPSED_MS = 50;

/**
 * How many deliveries a consumer's handlers finish per second: the larger of the last whole window's rate and
 * the current window's so far. It rises within a claim or two when handlers are quick and falls within a window
 * or two when they slow down or stop.
 */
export class Throughput {
  private windowStart: number;
  private count = 0;
  private lastRate = 0;

  constructor(private readonly now: () => number = Date.now) {
    this.windowStart = now();
  }

  finished(n: number): void {
    this.roll();
    this.count += n;
  }

  perSecond(): number {
    this.roll();
    const elapsed = Math.max(this.now() - this.windowStart, MIN_ELAPSED_MS);
    return Math.max(this.lastRate, (this.count * 1000) / elapsed);
  }

  private roll(): void {
    const now = this.now();
    const elapsed = now - this.windowStart;
    if (elapsed < WINDOW_MS) return;
    // A window with nothing after it (an idle consumer) says nothing of the rate now.
    this.lastRate = elapsed < 2 * WINDOW_MS ? (this.count * 1000) / elapsed : 0;
    this.windowStart = now;
    this.count = 0;
  }
}

/** How far ahead of its handlers a consumer claims: what they finish in this time at their recent rate. */
export const AHEAD_MS = 200;

export interface ClaimState {
  batchSize: number;
  concurrency: number;
  /** Deliveries a slot takes at once: 1 in lease mode, up to a transaction's chunk in transactional mode. */
  chunk: number;
  /** Deliveries the handlers finished per second lately (Throughput). */
  perSecond: number;
  /** Claimed, waiting for a slot. */
  queued: number;
  /** Inside running slots. */
  active: number;
  /** Slots running. */
  running: number;
}

/**
 * How many deliveries to claim now (0: wait). A consumer keeps queued ahead of its handlers what they finish in
 * AHEAD_MS at the rate they have been finishing (at least a chunk per slot, so slow handlers keep only enough to
 * refill their slots as they free up), plus a chunk for each free slot; it holds at most batchSize, and claims
 * once it may take at least half of that (or at once when a slot is idle with nothing queued). Quick handlers so
 * get large claims, and a consumer whose handlers are slow or hang does not take work that an idle one could start.
 */
export function claimSize(s: ClaimState): number {
  const ahead = Math.max(s.concurrency * s.chunk, Math.ceil((s.perSecond * AHEAD_MS) / 1000));
  const free = (s.concurrency - s.running) * s.chunk;
  const room = s.batchSize - s.queued - s.active;
  const want = Math.min(room, ahead + free - s.queued);
  const idle = free > 0 && s.queued === 0;
  return idle || want >= Math.min(ahead, s.batchSize) / 2 ? Math.max(want, 0) : 0;
}
