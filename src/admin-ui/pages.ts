import type { DeadLetter, MessageJourney, OutboxStatus } from '../types.js';
import type { KeyMatchRow } from '../sql/journey.js';
import { html, query, type Html } from './html.js';

/** What every page needs besides its data. */
export interface PageContext {
  /** Where the admin page is mounted: '' or '/outbox'. */
  base: string;
  schema: string;
  /** Replay and Discard buttons are shown. */
  canWrite: boolean;
  /** A token guards writes and this request has not signed in. */
  offerSignIn: boolean;
  readOnly: boolean;
  notice: string | undefined;
  /** Where this page is, for sign-in to come back to. */
  self: string;
}

/** The columns of each table. */
const SUBSCRIPTION_COLUMNS = [
  'Subscription',
  'Topics',
  'Pending',
  'Delayed',
  'In flight',
  'Dead',
  'Done last hour',
  'Failed last hour',
  'Oldest pending',
  '',
];
const DEAD_LETTER_COLUMNS = ['Message', 'Topic', 'Key', 'Attempts', 'Dead at', 'Last error', 'Payload', ''];
const DELIVERY_COLUMNS = [
  'Subscription',
  'Status',
  'Attempts',
  'First attempt',
  'Last attempt',
  'Finished',
  'Consumer',
  'Last error',
];
const FAILURE_COLUMNS = ['Subscription', 'Attempt', 'Failed at', 'Consumer', 'Error'];
const MATCH_COLUMNS = ['Message', 'Topic', 'Published'];

/** Longest payload shown in a list; the message page shows all of it. */
const PREVIEW_CHARS = 2_000;

const STYLE = `
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 20px; align-items: center; }
  header a { color: #fff; text-decoration: none; font-weight: 600; }
  header form { margin-left: auto; display: flex; gap: 6px; }
  main { padding: 16px 20px; }
  table { border-collapse: collapse; background: #fff; width: 100%; margin: 8px 0 20px; }
  th, td { border-bottom: 1px solid #e3e6eb; padding: 6px 8px; text-align: left; vertical-align: top; }
  th { background: #eef0f4; font-weight: 600; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  pre { margin: 0; white-space: pre-wrap; word-break: break-all; max-width: 48em; font-size: 12px; }
  .notice { background: #e6f4ea; border: 1px solid #9fd3ae; padding: 8px 12px; margin-bottom: 12px; }
  .warn { color: #a3261b; }
  .muted { color: #6b7280; }
  form.inline { display: inline; }
  button { cursor: pointer; }
`;

function layout(ctx: PageContext, title: string, body: Html, refreshSeconds?: number): Html {
  const signIn = ctx.offerSignIn
    ? html`<form method="post" action="${ctx.base}/login">
        <input type="hidden" name="back" value="${ctx.self}" />
        <input type="password" name="token" placeholder="admin token" aria-label="admin token" />
        <button type="submit">Sign in</button>
      </form>`
    : null;
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        ${refreshSeconds === undefined ? null : html`<meta http-equiv="refresh" content="${refreshSeconds}" />`}
        <title>${title} · pg-outbox</title>
        <style>
          ${STYLE}
        </style>
      </head>
      <body>
        <header>
          <a href="${ctx.base}/">pg-outbox · ${ctx.schema}</a>
          ${ctx.readOnly ? html`<span class="muted">read-only</span>` : null}
          <form method="get" action="${ctx.base}/search">
            <input type="search" name="key" placeholder="message key" aria-label="message key" />
            <button type="submit">Search</button>
          </form>
          <form method="get" action="${ctx.base}/message">
            <input type="text" name="id" placeholder="message id" aria-label="message id" size="10" />
            <button type="submit">Show</button>
          </form>
          ${signIn}
        </header>
        <main>
          ${ctx.notice === undefined ? null : html`<div class="notice" role="status">${ctx.notice}</div>`}
          <h1>${title}</h1>
          ${body}
        </main>
      </body>
    </html>`;
}

function seconds(ms: number): string {
  if (ms < 1_000) return `${ms} ms`;
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

const time = (d: Date | null | undefined): string => (d === null || d === undefined ? '' : d.toISOString());

function json(value: unknown, max = Infinity): string {
  const text = JSON.stringify(value, null, 2) ?? 'null';
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text;
}

/** A table of `rows` under these headers; `empty` says why there is no row. */
function table(headers: string[], rows: Html[], empty: string): Html {
  const head = headers.map((h) => html`<th>${h}</th>`);
  const none = html`<tr>
    <td colspan="${headers.length}" class="muted">${empty}</td>
  </tr>`;
  return html`<table>
    <thead>
      <tr>
        ${head}
      </tr>
    </thead>
    <tbody>
      ${rows.length === 0 ? none : rows}
    </tbody>
  </table>`;
}

const messageLink = (ctx: PageContext, id: string) =>
  html`<a href="${ctx.base}/message${query({ id })}">${id}</a>`;

export function overviewPage(ctx: PageContext, status: OutboxStatus): Html {
  const rows = status.subscriptions.map(
    (s) =>
      html`<tr>
        <td><a href="${ctx.base}/dead-letters${query({ subscription: s.name })}">${s.name}</a></td>
        <td>${s.topics.join(', ')}</td>
        <td class="n">${s.pending}</td>
        <td class="n">${s.delayed}</td>
        <td class="n">${s.inFlight}</td>
        <td class="n ${s.dead > 0 ? 'warn' : ''}">${s.dead}</td>
        <td class="n">
          ${s.doneLastHour} <span class="muted">(${(s.doneLastHour / 60).toFixed(1)}/min)</span>
        </td>
        <td class="n">${s.failedLastHour}</td>
        <td class="n">${seconds(s.oldestPendingMs)}</td>
        <td>
          ${[s.ordered ? 'ordered' : '', s.blockKeyOnDead ? 'blocks key on dead' : ''].filter(Boolean).join(', ')}
        </td>
      </tr>`,
  );
  const body = html` <p>
      Relay backlog: <strong>${status.relay.backlog}</strong> messages, lag
      <strong>${seconds(status.relay.lagMs)}</strong>.
    </p>
    ${table(SUBSCRIPTION_COLUMNS, rows, 'No subscriptions yet.')}
    <p class="muted">Refreshes every 10 s.</p>`;
  return layout(ctx, 'Subscriptions', body, 10);
}

function actionForm(
  ctx: PageContext,
  action: 'replay' | 'discard',
  fields: Record<string, string>,
  label: string,
): Html {
  const inputs = Object.entries(fields).map(
    ([k, v]) => html`<input type="hidden" name="${k}" value="${v}" />`,
  );
  return html`<form class="inline" method="post" action="${ctx.base}/${action}">
    ${inputs}<button type="submit">${label}</button>
  </form>`;
}

export function deadLettersPage(
  ctx: PageContext,
  subscription: string,
  letters: DeadLetter[],
  next: string | undefined,
): Html {
  const rows = letters.map(
    (d) =>
      html`<tr>
        <td>${messageLink(ctx, d.messageId)}</td>
        <td>${d.topic}</td>
        <td>${d.key ?? ''}</td>
        <td class="n">${d.attempt}</td>
        <td>${time(d.deadAt)}</td>
        <td><pre class="warn">${d.lastError ?? ''}</pre></td>
        <td><pre>${json(d.payload, PREVIEW_CHARS)}</pre></td>
        <td>
          ${
            ctx.canWrite
              ? [
                  actionForm(ctx, 'replay', { subscription, id: d.deliveryId }, 'Replay'),
                  ' ',
                  actionForm(ctx, 'discard', { subscription, id: d.deliveryId }, 'Discard'),
                ]
              : null
          }
        </td>
      </tr>`,
  );
  const writes = ctx.canWrite
    ? html`<p>${actionForm(ctx, 'replay', { subscription, all: '1' }, 'Replay all')}</p>`
    : html`<p class="muted">
        ${
          ctx.readOnly
            ? 'Read-only: replay and discard are off.'
            : ctx.offerSignIn
              ? 'Sign in with the admin token to replay or discard.'
              : 'Replay and discard are off: they need a token or an authorize hook (adminHandler({ token }), pg-outbox admin --token).'
        }
      </p>`;
  const more =
    next === undefined
      ? null
      : html`<p><a href="${ctx.base}/dead-letters${query({ subscription, after: next })}">Next page</a></p>`;
  const body = html` ${letters.length > 0 ? writes : null}
  ${table(DEAD_LETTER_COLUMNS, rows, 'No dead letters.')} ${more}`;
  return layout(ctx, `Dead letters of ${subscription}`, body);
}

export function messagePage(ctx: PageContext, journey: MessageJourney): Html {
  const m = journey.message;
  const deliveries = journey.deliveries.map(
    (d) =>
      html`<tr>
        <td>${d.subscription}</td>
        <td>${d.status}</td>
        <td class="n">${d.attempts}</td>
        <td>${time(d.firstAttemptAt)}</td>
        <td>${time(d.lastAttemptAt)}</td>
        <td>${time(d.completedAt)}</td>
        <td>${d.consumer ?? ''}</td>
        <td><pre class="warn">${d.lastError ?? ''}</pre></td>
      </tr>`,
  );
  const failures = journey.failures.map(
    (f) =>
      html`<tr>
        <td>${f.subscription}</td>
        <td class="n">${f.attempt}</td>
        <td>${time(f.failedAt)}</td>
        <td>${f.consumer ?? ''}</td>
        <td><pre class="warn">${f.error ?? ''}</pre></td>
      </tr>`,
  );
  const body = html` <table>
      <tbody>
        <tr>
          <th>Topic</th>
          <td>${m.topic}</td>
        </tr>
        <tr>
          <th>Key</th>
          <td>${m.key ?? ''}</td>
        </tr>
        <tr>
          <th>Published</th>
          <td>${time(m.publishedAt)}</td>
        </tr>
        <tr>
          <th>Deliver at</th>
          <td>${time(m.deliverAt)}</td>
        </tr>
        <tr>
          <th>Relayed</th>
          <td>${m.relayed ? time(m.relayedAt) || 'yes' : 'not yet'}</td>
        </tr>
        ${
          m.cancelledAt === null
            ? null
            : html`<tr>
                <th>Cancelled</th>
                <td>${time(m.cancelledAt)}</td>
              </tr>`
        }
        <tr>
          <th>Headers</th>
          <td><pre>${json(m.headers)}</pre></td>
        </tr>
        <tr>
          <th>Payload</th>
          <td><pre>${json(m.payload)}</pre></td>
        </tr>
      </tbody>
    </table>
    <h2>Deliveries</h2>
    ${table(DELIVERY_COLUMNS, deliveries, 'None yet.')}
    <h2>Failed attempts</h2>
    ${table(FAILURE_COLUMNS, failures, 'None.')}`;
  return layout(ctx, `Message ${m.id}`, body);
}

export function searchPage(ctx: PageContext, key: string, rows: KeyMatchRow[], scanned: number): Html {
  const found = rows.map(
    (r) =>
      html`<tr>
        <td>${messageLink(ctx, r.message_id)}</td>
        <td>${r.topic}</td>
        <td>${time(r.published_at)}</td>
      </tr>`,
  );
  const body = html` <p class="muted">
      Among the newest ${scanned.toLocaleString('en')} messages, newest first.
    </p>
    ${table(MATCH_COLUMNS, found, 'No message with this key.')}`;
  return layout(ctx, `Messages with key ${key}`, body);
}

export function problemPage(ctx: PageContext, title: string, detail: string): Html {
  return layout(
    ctx,
    title,
    html`<p class="warn">${detail}</p>
      <p><a href="${ctx.base}/">Back to the overview</a></p>`,
  );
}
