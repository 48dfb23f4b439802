import { randomUUID } from 'node:crypto';
import { OutboxError, RetryAfterError } from './errors.js';
import { assertKeyPart } from './idempotency-key.js';
import type { OnceResult } from './types.js';

/**
 * The part of a Redis client the weak check needs: one raw command. node-redis (v4 to v6) has it as
 * `client.sendCommand`; for ioredis pass `{ sendCommand: (args) => redis.call(...args) }`.
 */
export interface RedisCommands {
  sendCommand(args: string[]): Promise<unknown>;
}

export interface WeakCheckOptions {
  /** Key prefix in Redis. @defaultValue 'pg-outbox:weak:' */
  prefix?: string;
  /** How long a key is remembered after its effect ran. @defaultValue 86_400_000 (1 day) */
  ttlMs?: number;
  /**
   * How long a running effect holds its key. If the process dies meanwhile, the key frees itself after this
   * and a redelivery runs the effect again (the rare duplicate this check accepts). @defaultValue 60_000
   */
  claimMs?: number;
  /** The delay of the RetryAfterError thrown while another caller runs the same key. @defaultValue 1000 */
  busyRetryMs?: number;
}

export interface WeakCheck {
  /**
   * Runs fn unless (scope, key) already ran within ttlMs. While another caller is running the same key this
   * throws a RetryAfterError (a handler that lets it through is retried after the claim), so an effect is never
   * skipped because of a run that then failed or died.
   */
  once<T>(scope: string, key: string, fn: () => Promise<T>): Promise<OnceResult<T>>;
}

const DONE = 'done';
// Replace our claim token with DONE, or delete it, only while the key still holds our token.
const FINISH = `if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], '${DONE}', 'PX', ARGV[2]) end return nil`;
const ABANDON = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', `${name} must be a positive integer of milliseconds`, {
      value: v,
    });
  }
  return v;
}

/**
 * The Redis key of (scope, key). Scope and key may both hold ':', so the scope's length (in UTF-16 code units)
 * comes first: after the prefix, ('a:b', 'c') is `3:a:b:c` and ('a', 'b:c') is `1:a:b:c`, where the earlier
 * `${scope}:${key}` made both `a:b:c`. Keys written in that earlier encoding are not recognised after the
 * upgrade (nor by processes of the old version during a rolling one): an effect that ran within ttlMs before the
 * upgrade runs again if its message is delivered again after it.
 */
function weakKey(prefix: string, scope: string, key: string): string {
  return `${prefix}${scope.length}:${scope}:${key}`;
}

/**
 * The weak idempotency check: a Redis key per (scope, key), outside any database transaction. Cheaper than the
 * strong check and usable for effects outside Postgres (an SMS, a push notification), at the price of a rare
 * duplicate: a process that dies after the effect but before marking it done leaves the key to expire after
 * claimMs, and a redelivery runs the effect again. Use `ctx.once` / `outbox.once` for anything money-like.
 */
export function createWeakCheck(redis: RedisCommands, options: WeakCheckOptions = {}): WeakCheck {
  if (typeof redis?.sendCommand !== 'function') {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'createWeakCheck needs a Redis client with sendCommand(args)',
    );
  }
  const prefix = options.prefix ?? 'pg-outbox:weak:';
  const ttlMs = positive('ttlMs', options.ttlMs, 86_400_000);
  const claimMs = positive('claimMs', options.claimMs, 60_000);
  const busyRetryMs = positive('busyRetryMs', options.busyRetryMs, 1000);

  return {
    async once<T>(scope: string, key: string, fn: () => Promise<T>): Promise<OnceResult<T>> {
      assertKeyPart('scope', scope);
      assertKeyPart('key', key);
      const redisKey = weakKey(prefix, scope, key);
      const token = randomUUID();
      const claimed = await redis.sendCommand(['SET', redisKey, token, 'NX', 'PX', String(claimMs)]);
      if (claimed === null) {
        if ((await redis.sendCommand(['GET', redisKey])) === DONE) return { duplicate: true };
        throw new RetryAfterError(busyRetryMs, `weak check: ${scope}:${key} is being handled elsewhere`);
      }
      let result: T;
      try {
        result = await fn();
      } catch (error) {
        await redis.sendCommand(['EVAL', ABANDON, '1', redisKey, token]).catch(() => undefined);
        throw error;
      }
      // The effect ran: a failure to mark it is not the caller's failure (a retry would repeat the effect).
      // The claim then expires after claimMs, and only a later duplicate delivery could run it again.
      await redis.sendCommand(['EVAL', FINISH, '1', redisKey, token, String(ttlMs)]).catch(() => undefined);
      return { duplicate: false, result };
    },
  };
}
