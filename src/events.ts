import { EventEmitter } from 'node:events';

/** Events an Outbox emits, named 'noun:verb'. */
export interface OutboxEvents {
  /** A background loop hit an error; it logs, backs off and goes on. Never thrown. */
  error: [error: unknown, context: { component: string }];
  'relay:batch': [info: { messages: number; deliveries: number }];
  'relay:leader': [info: { leader: boolean }];
  'delivery:retry': [info: { subscription: string; deliveryId: string; attempt: number; delayMs: number }];
  'delivery:dead': [
    info: { subscription: string; deliveryId: string; attempt: number; error: string | null },
  ];
}

export type EventName = keyof OutboxEvents;
export type Listener<E extends EventName> = (...args: OutboxEvents[E]) => void;

/** A typed emitter. 'error' without a listener is dropped (it is logged already), never thrown. */
export class OutboxEmitter {
  private readonly emitter = new EventEmitter();

  on<E extends EventName>(event: E, listener: Listener<E>): void {
    this.emitter.on(event, listener as (...args: unknown[]) => void);
  }

  off<E extends EventName>(event: E, listener: Listener<E>): void {
    this.emitter.off(event, listener as (...args: unknown[]) => void);
  }

  emit<E extends EventName>(event: E, ...args: OutboxEvents[E]): void {
    if (this.emitter.listenerCount(event) === 0) return;
    try {
      this.emitter.emit(event, ...args);
    } catch {
      // A listener's bug must not stop a background loop.
    }
  }
}
