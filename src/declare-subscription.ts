import type pg from 'pg';
import { withTransaction, type Executor } from './db/executor.js';
import type { SchemaName } from './db/identifiers.js';
import { OutboxError } from './errors.js';
import {
  insertSubscription,
  lockSubscription,
  setReadCommitted,
  updateSubscription,
  type StoredSubscription,
  type SubscriptionSettings,
} from './sql/subscriptions.js';
import type { StoredRateLimit } from './flow-options.js';
import type { TopicFilter } from './topics.js';

/**
 * What a declaration asks for; an undefined setting keeps its stored value (for a new subscription: false, and
 * no limits). null asks for no limit.
 */
export interface SubscriptionRequest {
  filter: TopicFilter;
  ordered: boolean | undefined;
  blockKeyOnDead: boolean | undefined;
  rateLimit?: StoredRateLimit | null | undefined;
  keyConcurrency?: number | null | undefined;
}

const DEFAULTS: SubscriptionSettings = {
  ordered: false,
  blockKeyOnDead: false,
  rateLimit: null,
  keyConcurrency: null,
};
const SETTINGS = ['ordered', 'blockKeyOnDead', 'rateLimit', 'keyConcurrency'] as const;

/**
 * Who declares. 'declare' (declareSubscription, the CLI) changes the settings it gives. 'consumer' (subscribe)
 * never does: a consumer whose settings differ from the stored ones is refused, because one process's options
 * silently changing every other consumer's ordering is how ordered subscriptions became unordered.
 * Both replace the topics.
 */
export type Declarer = 'declare' | 'consumer';

export interface DeclaredSubscription extends SubscriptionSettings {
  id: number;
}

/** Tries at most this often to lock a row that a concurrent declaration keeps creating and deleting. */
const MAX_TRIES = 3;

/** Creates the subscription or updates it; returns its id and the settings its consumers run with. */
export function declareSubscription(
  pool: pg.Pool,
  schema: SchemaName,
  name: string,
  request: SubscriptionRequest,
  by: Declarer,
): Promise<DeclaredSubscription> {
  return withTransaction(pool, async (exec) => {
    await setReadCommitted(exec);
    for (let tries = 1; ; tries++) {
      const declared = await declareOnce(exec, schema, name, request, by);
      if (declared !== null) return declared;
      if (tries >= MAX_TRIES) {
        throw new OutboxError(
          'OUTBOX_SUBSCRIPTION_CONFLICT',
          `Subscription "${name}" kept being created and removed by other sessions while this declaration ran; retry it`,
          { value: name },
        );
      }
    }
  });
}

async function declareOnce(
  exec: Executor,
  schema: SchemaName,
  name: string,
  request: SubscriptionRequest,
  by: Declarer,
): Promise<DeclaredSubscription | null> {
  const stored = await lockSubscription(exec, schema, name);
  if (stored === null) {
    const settings = merge(DEFAULTS, request);
    assertConsistent(name, settings);
    const id = await insertSubscription(exec, schema, name, request.filter, settings);
    return id === null ? null : { id, ...settings };
  }
  const settings = by === 'consumer' ? matchStored(name, stored, request) : merge(stored, request);
  assertConsistent(name, settings);
  const unchanged =
    sameTopics(stored.topics, request.filter.topics) &&
    SETTINGS.every((option) => same(stored[option], settings[option]));
  if (!unchanged) await updateSubscription(exec, schema, stored.id, request.filter, settings);
  return { id: stored.id, ...settings };
}

function merge(stored: SubscriptionSettings, request: SubscriptionRequest): SubscriptionSettings {
  return {
    ordered: request.ordered ?? stored.ordered,
    blockKeyOnDead: request.blockKeyOnDead ?? stored.blockKeyOnDead,
    rateLimit: request.rateLimit === undefined ? stored.rateLimit : request.rateLimit,
    keyConcurrency: request.keyConcurrency === undefined ? stored.keyConcurrency : request.keyConcurrency,
  };
}

/** Equal settings: the same flag or number, or rate limits with the same rate and burst. */
function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** How the CLI spells a setting's value (`pg-outbox declare`). */
function cliFlag(option: (typeof SETTINGS)[number], value: unknown): string {
  if (option === 'rateLimit') {
    const limit = value as StoredRateLimit | null;
    return limit === null ? '--no-rate-limit' : `--rate-limit ${limit.perSecond} --burst ${limit.burst}`;
  }
  if (option === 'keyConcurrency') {
    return value === null ? '--no-key-concurrency' : `--key-concurrency ${value as number}`;
  }
  return `--${value === true ? '' : 'no-'}${option === 'ordered' ? 'ordered' : 'block-key-on-dead'}`;
}

function matchStored(
  name: string,
  stored: StoredSubscription,
  request: SubscriptionRequest,
): SubscriptionSettings {
  for (const option of SETTINGS) {
    const requested = request[option];
    if (requested === undefined || same(requested, stored[option])) continue;
    const shown = (v: unknown) => JSON.stringify(v);
    throw new OutboxError(
      'OUTBOX_SUBSCRIPTION_CONFLICT',
      `Subscription "${name}" is stored with ${option}: ${shown(stored[option])}, but subscribe() asks for ` +
        `${option}: ${shown(requested)}. A consumer does not change a subscription's settings, which all its consumers ` +
        `share: omit ${option} to run with the stored value, or change it first with ` +
        `declareSubscription("${name}", { topics, ${option}: ${shown(requested)} }) or ` +
        `\`pg-outbox declare ${name} --topic <topic> ${cliFlag(option, requested)}\`.`,
      { value: { subscription: name, option, stored: stored[option], requested } },
    );
  }
  return {
    ordered: stored.ordered,
    blockKeyOnDead: stored.blockKeyOnDead,
    rateLimit: stored.rateLimit,
    keyConcurrency: stored.keyConcurrency,
  };
}

function assertConsistent(name: string, settings: SubscriptionSettings): void {
  if (settings.keyConcurrency !== null && settings.ordered) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `keyConcurrency applies to unordered subscriptions, and "${name}" would be ordered, which runs one delivery ` +
        'of a key at a time already: drop keyConcurrency (CLI: --no-key-concurrency) or ordered',
      { value: { subscription: name, ...settings } },
    );
  }
  if (settings.blockKeyOnDead && !settings.ordered) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      `blockKeyOnDead applies to ordered subscriptions, and "${name}" would not be ordered: ` +
        'set ordered: true as well (CLI: --ordered)',
      { value: { subscription: name, ...settings } },
    );
  }
}

function sameTopics(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((topic, i) => topic === b[i]);
}
