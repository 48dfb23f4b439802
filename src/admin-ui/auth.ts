import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** What a request wants to do: look, or change a dead letter. */
export type AdminAction = 'read' | 'replay' | 'discard';

export interface AdminAuth {
  readOnly: boolean;
  token: string | undefined;
  authorize: ((req: IncomingMessage, action: AdminAction) => boolean | Promise<boolean>) | undefined;
}

export const SESSION_COOKIE = 'pg_outbox_admin';

/** The cookie's value: derived from the token, so the token itself never sits in the browser. */
export function sessionValue(token: string): string {
  return createHmac('sha256', token).update('pg-outbox admin session').digest('hex');
}

/** Compares secrets in constant time. */
export function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return undefined;
}

/** The token came as `Authorization: Bearer <token>` (scripts) or as the session cookie set by sign-in. */
export function presentsToken(req: IncomingMessage, token: string): boolean {
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
  if (bearer !== undefined) return sameText(bearer, token);
  const session = cookie(req, SESSION_COOKIE);
  return session !== undefined && sameText(session, sessionValue(token));
}

/**
 * A write sent from another site's page (CSRF): its Origin names another host, or the browser marks it cross-site.
 * The session cookie is SameSite=Strict as well; this holds where it is not honoured.
 */
export function isCrossSite(req: IncomingMessage): boolean {
  if (req.headers['sec-fetch-site'] === 'cross-site') return true;
  const origin = req.headers.origin;
  if (origin === undefined) return false; // not sent by a browser's cross-site form, or an old one
  if (origin === 'null') return true; // a sandboxed frame or a redirect chain: nothing to trust
  try {
    return new URL(origin).host !== req.headers.host;
  } catch {
    return true;
  }
}

/** Why this write is refused, or null when it may go ahead. */
export async function writeRefusal(
  auth: AdminAuth,
  req: IncomingMessage,
  action: Exclude<AdminAction, 'read'>,
): Promise<string | null> {
  if (auth.readOnly) return 'This admin page is read-only.';
  if (isCrossSite(req)) return 'A request from another site was refused.';
  if (auth.authorize !== undefined) {
    return (await auth.authorize(req, action)) ? null : `Not authorized to ${action}.`;
  }
  if (auth.token !== undefined) {
    return presentsToken(req, auth.token) ? null : 'Sign in with the admin token to replay or discard.';
  }
  return 'Write actions need a token or an authorize hook: adminHandler({ token }) or pg-outbox admin --token.';
}

/** Whether the page offers write buttons to this request (the write itself is checked again). */
export function mayWrite(auth: AdminAuth, req: IncomingMessage): boolean {
  if (auth.readOnly) return false;
  if (auth.authorize !== undefined) return true;
  return auth.token !== undefined && presentsToken(req, auth.token);
}
