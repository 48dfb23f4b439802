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
import type { TopicFilter } from './topics.js';

/** What a declaration asks for; an undefined setting keeps its stored value (false for a new subscription). */
export interface SubscriptionRequest {
  filter: TopicFilter;
  ordered: boolean | undefined;
  blockKeyOnDead: boolean | undefined;
}

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
    const settings = { ordered: request.ordered ?? false, blockKeyOnDead: request.blockKeyOnDead ?? false };
    assertConsistent(name, settings);
    const id = await insertSubscription(exec, schema, name, request.filter, settings);
    return id === null ? null : { id, ...settings };
  }
  const settings = by === 'consumer' ? matchStored(name, stored, request) : merge(stored, request);
  assertConsistent(name, settings);
  const unchanged =
    sameTopics(stored.topics, request.filter.topics) &&
    stored.ordered === settings.ordered &&
    stored.blockKeyOnDead === settings.blockKeyOnDead;
  if (!unchanged) await updateSubscription(exec, schema, stored.id, request.filter, settings);
  return { id: stored.id, ...settings };
}

function merge(stored: SubscriptionSettings, request: SubscriptionRequest): SubscriptionSettings {
  return {
    ordered: request.ordered ?? stored.ordered,
    blockKeyOnDead: request.blockKeyOnDead ?? stored.blockKeyOnDead,
  };
}

const FLAGS = { ordered: 'ordered', blockKeyOnDead: 'block-key-on-dead' } as const;

function matchStored(
  name: string,
  stored: StoredSubscription,
  request: SubscriptionRequest,
): SubscriptionSettings {
  for (const option of ['ordered', 'blockKeyOnDead'] as const) {
    const requested = request[option];
    if (requested === undefined || requested === stored[option]) continue;
    const flag = `--${requested ? '' : 'no-'}${FLAGS[option]}`;
    throw new OutboxError(
      'OUTBOX_SUBSCRIPTION_CONFLICT',
      `Subscription "${name}" is stored with ${option}: ${stored[option]}, but subscribe() asks for ` +
        `${option}: ${requested}. A consumer does not change a subscription's settings, which all its consumers ` +
        `share: omit ${option} to run with the stored value, or change it first with ` +
        `declareSubscription("${name}", { topics, ${option}: ${requested} }) or ` +
        `\`pg-outbox declare ${name} --topic <topic> ${flag}\`.`,
      { value: { subscription: name, option, stored: stored[option], requested } },
    );
  }
  return { ordered: stored.ordered, blockKeyOnDead: stored.blockKeyOnDead };
}

function assertConsistent(name: string, settings: SubscriptionSettings): void {
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
