/**
 * Counts handler calls and resolves once `target` arrived: the scenarios stop their clock on this rather than on
 * a poll, so the figure carries no polling slack. `wait` fails after a deadline instead of hanging the suite.
 */
export class Countdown {
  count = 0;
  private resolve: () => void = () => undefined;
  private readonly reached: Promise<void>;

  constructor(readonly target: number) {
    this.reached = new Promise<void>((r) => (this.resolve = r));
    if (target <= 0) this.resolve();
  }

  hit(): void {
    if (++this.count === this.target) this.resolve();
  }

  async wait(what: string, timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out after ${timeoutMs} ms: ${what} (${this.count} of ${this.target})`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([this.reached, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
