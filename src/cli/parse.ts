import { InvalidArgumentError } from 'commander';

/** Commander argument parser: an integer of at least 1. */
export function positiveInteger(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError('expected a positive integer');
  }
  return n;
}

/** Commander argument parser: a number above 0 (a rate, a burst). */
export function positiveNumber(value: string): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n) || n <= 0) {
    throw new InvalidArgumentError('expected a number above 0');
  }
  return n;
}

/** Commander argument parser for a repeatable option: collects every value. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

// Date, optionally a time (minutes, seconds, fraction), optionally an offset: what `new Date()` reads the same way
// everywhere. Its looser formats ("March 7") depend on the engine, so they are refused.
const ISO_8601 = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Commander argument parser: an ISO-8601 time. Without an offset a date-time is local time and a bare date is UTC
 * midnight, as in JavaScript.
 */
export function isoTime(value: string): Date {
  const date = ISO_8601.test(value) ? new Date(value.replace(' ', 'T')) : undefined;
  if (date === undefined || Number.isNaN(date.getTime()) || !isCalendarDate(value.slice(0, 10))) {
    throw new InvalidArgumentError('expected an ISO-8601 time, e.g. 2025-03-07T14:00:00Z');
  }
  return date;
}

/** `new Date()` rolls 2025-02-30 over to March 2; a typo like that is refused instead. */
function isCalendarDate(ymd: string): boolean {
  const [year = 0, month = 0, day = 0] = ymd.split('-').map(Number);
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
}

/** Commander argument parser: a TCP port, 0 for any free one. */
export function port(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65_535) throw new InvalidArgumentError('expected a port from 0 to 65535');
  return n;
}
