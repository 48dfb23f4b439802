import { describe, expect, it } from 'vitest';
import { claimSize, Throughput, type ClaimState } from '../../src/consumer/claim-size.js';

const lease = (s: Partial<ClaimState>): ClaimState => ({
  batchSize: 1000,
  concurrency: 10,
  chunk: 1,
  perSecond: 0,
  queued: 0,
  active: 0,
  running: 0,
  ...s,
});

describe('Throughput', () => {
  it('reads the current window at once, the last whole window after it, and nothing after an idle window', () => {
    let now = 0;
    const t = new Throughput(() => now);
    expect(t.perSecond()).toBe(0);
    now = 10;
    t.finished(20);
    // Measured over at least 50 ms: 20 in 10 ms reads as 400/s, not 2,000/s.
    expect(t.perSecond()).toBe(400);
    now = 400;
    t.finished(380);
    expect(t.perSecond()).toBe(1000);
    now = 600; // the window of 600 ms closes: 400 in it
    expect(t.perSecond()).toBeCloseTo(666.67, 1);
    now = 2000; // a window with nothing for 1.4 s
    expect(t.perSecond()).toBe(0);
  });
});

describe('claimSize', () => {
  it('starts a new consumer with a slot and one queued delivery per slot', () => {
    expect(claimSize(lease({}))).toBe(20);
    expect(claimSize(lease({ chunk: 100, concurrency: 4 }))).toBe(800);
  });

  it('claims up to batchSize for handlers that finish quickly', () => {
    expect(claimSize(lease({ perSecond: 50_000 }))).toBe(1000);
    expect(claimSize(lease({ perSecond: 50_000, queued: 400 }))).toBe(600);
    // Less than half of batchSize could be taken: wait for the queue to go down.
    expect(claimSize(lease({ perSecond: 50_000, queued: 600 }))).toBe(0);
    expect(claimSize(lease({ perSecond: 50_000, queued: 200, active: 10, running: 10 }))).toBe(790);
  });

  it('keeps slow handlers to a refill of their slots', () => {
    // 10 handlers of a second each: 10/s, so 200 ms ahead is 2, and the floor is one per slot.
    const slow = { perSecond: 10, running: 10, active: 10 };
    expect(claimSize(lease({ ...slow, queued: 10 }))).toBe(0);
    expect(claimSize(lease({ ...slow, queued: 6 }))).toBe(0);
    expect(claimSize(lease({ ...slow, queued: 5 }))).toBe(5);
    // A slot freed and nothing queued: claim at once.
    expect(claimSize(lease({ perSecond: 10, running: 9, active: 9 }))).toBe(11);
  });

  it('never asks for more than batchSize leaves room for', () => {
    expect(claimSize(lease({ batchSize: 10, perSecond: 1e6, running: 3, active: 3 }))).toBe(7);
    expect(claimSize(lease({ batchSize: 10, queued: 7, running: 3, active: 3 }))).toBe(0);
    expect(claimSize(lease({ batchSize: 1, concurrency: 1 }))).toBe(1);
  });

  it('grows claims to batchSize within a few claims when handlers are instant', () => {
    // A consumer whose claim statements take 5 ms and whose handlers finish the moment they start.
    let now = 0;
    const t = new Throughput(() => now);
    const sizes: number[] = [];
    for (let i = 0; i < 12; i++) {
      const size = claimSize(lease({ perSecond: t.perSecond() }));
      sizes.push(size);
      now += 5;
      t.finished(size);
    }
    expect(sizes[0]).toBe(20);
    expect(sizes.slice(-3)).toEqual([1000, 1000, 1000]);
    expect(sizes.findIndex((s) => s === 1000)).toBeLessThanOrEqual(6);
  });
});
