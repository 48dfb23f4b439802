/**
 * A wait that ends after a timeout or at the first nudge. A nudge that arrives while nobody waits is kept, so the
 * next wait returns at once: a NOTIFY between "claimed nothing" and "go to sleep" is not lost.
 */
export class Wakeup {
  private pending = false;
  private resolveWait: (() => void) | null = null;

  nudge(): void {
    if (this.resolveWait === null) {
      this.pending = true;
      return;
    }
    this.resolveWait();
  }

  wait(ms: number): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.resolveWait = null;
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.resolveWait = done;
    });
  }
}

/** Exponential backoff for loops that hit errors: 100 ms doubling to 5 s. */
export function errorBackoffMs(failures: number): number {
  return Math.min(5_000, 100 * 2 ** Math.min(failures, 10));
}
