import { OutboxError } from './errors.js';

// The checks every options resolver uses: typed OutboxErrors before anything runs.

export function assertKnownKeys(where: string, value: unknown, known: readonly string[]): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${where} options must be an object`, { value });
  }
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      throw new OutboxError(
        'OUTBOX_UNKNOWN_OPTION',
        `Unknown ${where} option "${key}"; known: ${known.join(', ')}`,
        {
          value: key,
        },
      );
    }
  }
}

export function integer(name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be an integer from ${min} to ${max}`, {
      value,
    });
  }
  return value;
}

export function boolean(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be true or false`, { value });
  }
  return value;
}

export function objectOrEmpty(name: string, value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be an object`, { value });
  }
  return value as Record<string, unknown>;
}

export const DAY_MS = 86_400_000;
