import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { isOutboxError, OutboxError } from '../errors.js';
import type { KeyMatchRow } from '../sql/journey.js';
import type { DeadLetter, MessageJourney, OutboxStatus } from '../types.js';
import {
  isCrossSite,
  mayWrite,
  sameText,
  presentsToken,
  SESSION_COOKIE,
  sessionValue,
  writeRefusal,
  type AdminAction,
  type AdminAuth,
} from './auth.js';
import type { Html } from './html.js';
import {
  deadLettersPage,
  messagePage,
  overviewPage,
  problemPage,
  searchPage,
  type PageContext,
} from './pages.js';

export interface AdminHandlerOptions {
  /**
   * No Replay or Discard buttons, and every write is refused.
   * @defaultValue false
   */
  readOnly?: boolean;
  /**
   * A secret that write actions need: the page's "Sign in" sets a cookie derived from it (HttpOnly, SameSite=Strict),
   * and scripts send `Authorization: Bearer <token>`. Without a token or `authorize` every write is refused.
   */
  token?: string;
  /**
   * Your own check, for every request ('read') and every write ('replay', 'discard'): return false to refuse it
   * (403). When given, it decides writes instead of the token.
   */
  authorize?: (req: IncomingMessage, action: AdminAction) => boolean | Promise<boolean>;
  /**
   * The path the handler is mounted under, e.g. '/outbox': its links start with it, and requests whose URL starts
   * with it have it taken off (so a plain node:http server and an Express mount both work).
   * @defaultValue ''
   */
  basePath?: string;
}

/** What the pages read and change, bound to one Outbox. */
export interface AdminData {
  schema: string;
  status(): Promise<OutboxStatus>;
  deadLetters(subscription: string, query: { limit: number; after?: string }): Promise<DeadLetter[]>;
  replay(subscription: string, ids: string[] | null): Promise<number>;
  discard(subscription: string, ids: string[] | null): Promise<number>;
  journey(id: string): Promise<MessageJourney | null>;
  findByKey(key: string, scan: number): Promise<KeyMatchRow[]>;
}

export type AdminRequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

const PAGE_SIZE = 100;
/** The key search walks at most this many of the newest messages (no index on key; see selectMessagesByKey). */
const KEY_SCAN = 100_000;
/** Largest form body accepted: a few ids and names. */
const MAX_BODY_BYTES = 16_384;

class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    detail: string,
  ) {
    super(detail);
  }
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  let body = '';
  for await (const chunk of req as AsyncIterable<Buffer>) {
    body += chunk.toString('utf8');
    if (body.length > MAX_BODY_BYTES) throw new HttpProblem(413, 'Too large', 'The form is too large.');
  }
  return new URLSearchParams(body);
}

function checkBase(basePath: string | undefined): string {
  const base = basePath ?? '';
  if (base !== '' && !/^(\/[A-Za-z0-9._~-]+)+$/.test(base)) {
    throw new OutboxError('OUTBOX_INVALID_OPTION', "basePath must look like '/outbox' (no trailing slash)", {
      value: base,
    });
  }
  return base;
}

function send(res: ServerResponse, status: number, page: Html, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    // No script runs on these pages, whatever a payload holds; no other site may frame them.
    'content-security-policy':
      "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'same-origin',
    ...headers,
  });
  res.end(page.text);
}

function redirect(res: ServerResponse, location: string, headers: Record<string, string> = {}): void {
  res.writeHead(303, { location, 'cache-control': 'no-store', ...headers });
  res.end();
}

/** The ids of a write form: one `id`, or every dead letter of the subscription with `all=1`. */
function idsOf(form: URLSearchParams): string[] | null {
  if (form.get('all') === '1') return null;
  const ids = form.getAll('id');
  if (ids.length === 0) throw new HttpProblem(400, 'Bad request', 'Name a dead letter (id) or all=1.');
  return ids;
}

/**
 * The admin page (see README, "Admin page"): server-rendered HTML, no script, every value escaped. A plain node:http
 * request handler; Express and Fastify pass their raw request and response to it.
 */
export function createAdminHandler(
  data: AdminData,
  options: AdminHandlerOptions,
  log: Logger,
): AdminRequestHandler {
  const base = checkBase(options.basePath);
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token.length < 8)) {
    throw new OutboxError(
      'OUTBOX_INVALID_OPTION',
      'the admin token must be a string of at least 8 characters',
    );
  }
  if (options.authorize !== undefined && typeof options.authorize !== 'function') {
    throw new OutboxError('OUTBOX_INVALID_OPTION', 'authorize must be a function (req, action) => boolean');
  }
  const auth: AdminAuth = {
    readOnly: options.readOnly === true,
    token: options.token,
    authorize: options.authorize,
  };

  function contextOf(req: IncomingMessage, url: URL): PageContext {
    return {
      base,
      schema: data.schema,
      canWrite: mayWrite(auth, req),
      offerSignIn:
        !auth.readOnly &&
        auth.authorize === undefined &&
        auth.token !== undefined &&
        !presentsToken(req, auth.token),
      readOnly: auth.readOnly,
      notice: url.searchParams.get('notice') ?? undefined,
      self: `${base}${url.pathname}${url.search}`,
    };
  }

  async function get(req: IncomingMessage, url: URL): Promise<Html> {
    const ctx = contextOf(req, url);
    const param = (name: string) => url.searchParams.get(name) ?? '';
    switch (url.pathname) {
      case '/':
        return overviewPage(ctx, await data.status());
      case '/dead-letters': {
        const subscription = param('subscription');
        const after = url.searchParams.get('after') ?? undefined;
        const letters = await data.deadLetters(subscription, { limit: PAGE_SIZE + 1, after });
        const next = letters.length > PAGE_SIZE ? letters[PAGE_SIZE - 1]?.deliveryId : undefined;
        return deadLettersPage(ctx, subscription, letters.slice(0, PAGE_SIZE), next);
      }
      case '/message': {
        const journey = await data.journey(param('id'));
        if (journey === null)
          throw new HttpProblem(404, 'Not found', `No message ${param('id')} is retained.`);
        return messagePage(ctx, journey);
      }
      case '/search':
        return searchPage(ctx, param('key'), await data.findByKey(param('key'), KEY_SCAN), KEY_SCAN);
      default:
        throw new HttpProblem(404, 'Not found', `Nothing at ${url.pathname}.`);
    }
  }

  async function post(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const form = await readForm(req);
    if (url.pathname === '/login') return signIn(req, res, form);
    const action = url.pathname.slice(1);
    if (action !== 'replay' && action !== 'discard')
      throw new HttpProblem(404, 'Not found', `Nothing at ${url.pathname}.`);
    const refusal = await writeRefusal(auth, req, action);
    if (refusal !== null) throw new HttpProblem(403, 'Refused', refusal);
    const subscription = form.get('subscription') ?? '';
    const ids = idsOf(form);
    const n =
      action === 'replay' ? await data.replay(subscription, ids) : await data.discard(subscription, ids);
    log.info({ action, subscription, ids, count: n }, 'admin page write');
    const done = action === 'replay' ? `Replayed ${n} dead letter(s).` : `Discarded ${n} dead letter(s).`;
    redirect(res, `${base}/dead-letters?${new URLSearchParams({ subscription, notice: done }).toString()}`);
  }

  function signIn(req: IncomingMessage, res: ServerResponse, form: URLSearchParams): void {
    if (auth.token === undefined || auth.readOnly)
      throw new HttpProblem(404, 'Not found', 'There is nothing to sign in to.');
    if (isCrossSite(req)) throw new HttpProblem(403, 'Refused', 'A request from another site was refused.');
    if (!sameText(form.get('token') ?? '', auth.token)) throw new HttpProblem(403, 'Refused', 'Wrong token.');
    const back = form.get('back') ?? '';
    const location = back.startsWith(`${base}/`) && !back.startsWith('//') ? back : `${base}/`;
    const cookie = `${SESSION_COOKIE}=${sessionValue(auth.token)}; HttpOnly; SameSite=Strict; Path=${base || '/'}`;
    redirect(res, location, { 'set-cookie': cookie });
  }

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = req.url ?? '/';
    const path =
      base !== '' && (raw === base || raw.startsWith(`${base}/`) || raw.startsWith(`${base}?`))
        ? raw.slice(base.length)
        : raw;
    const url = new URL(path === '' || path.startsWith('?') ? `/${path}` : path, 'http://admin.invalid');
    try {
      if (auth.authorize !== undefined && !(await auth.authorize(req, 'read'))) {
        throw new HttpProblem(403, 'Refused', 'Not authorized.');
      }
      if (req.method === 'POST') return await post(req, res, url);
      if (req.method !== 'GET' && req.method !== 'HEAD')
        throw new HttpProblem(405, 'Method not allowed', 'GET or POST only.');
      send(res, 200, await get(req, url));
    } catch (error) {
      const problem = toProblem(error, log);
      send(res, problem.status, problemPage(contextOf(req, url), problem.title, problem.message));
    }
  }

  return (req, res) => void serve(req, res);
}

/** Bad input from the page (an unknown subscription or id) is the user's 4xx; anything else is logged, 500. */
function toProblem(error: unknown, log: Logger): HttpProblem {
  if (error instanceof HttpProblem) return error;
  if (isOutboxError(error, 'OUTBOX_UNKNOWN_SUBSCRIPTION') || isOutboxError(error, 'OUTBOX_UNKNOWN_MESSAGE')) {
    return new HttpProblem(404, 'Not found', error.message);
  }
  if (isOutboxError(error)) return new HttpProblem(400, 'Bad request', error.message);
  log.error({ err: error }, 'admin page request failed');
  return new HttpProblem(500, 'Something went wrong', 'The request failed; the server log has the details.');
}
