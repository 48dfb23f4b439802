import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createServer, type RequestListener } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Browser, Locator, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/index.js';
import { cell, launchBrowser, noChromium, tableRows } from '../helpers/browser.js';
import { setupOutboxTest, waitFor, type OutboxTestContext } from '../helpers/outbox.js';

const TOPIC = 'orders.placed';
const TOKEN = 'admin-page-test-token';
const HOSTILE_KEY = '<img src=x onerror="window.__pwned = true">';
const HOSTILE_HTML = '<script>window.__pwned = true</script><b>bold</b>';
/**
 * Where the screenshots go: docs/ (the README's pictures) with UPDATE_SCREENSHOTS=1, else a temporary folder, so
 * that a test run leaves the checkout as it was.
 */
const DOCS =
  process.env.UPDATE_SCREENSHOTS === '1'
    ? fileURLToPath(new URL('../../docs/', import.meta.url))
    : `${path.join(tmpdir(), 'pg-outbox-admin-screenshots')}${path.sep}`;

/**
 * Published in this order to both subscriptions: shipping takes every one, billing (maxAttempts 1) dead-letters
 * those with `fail` until the test heals them.
 */
const MESSAGES = {
  first: { key: 'order-1', payload: { order: 1 } },
  replayed: { key: 'order-2', payload: { order: 2, fail: true } },
  discarded: { key: 'order-3', payload: { order: 3, fail: true } },
  hostile: { key: HOSTILE_KEY, payload: { html: HOSTILE_HTML, fail: true } },
  scripted: { key: 'order-5', payload: { order: 5, fail: true } },
  declined: { key: 'order-6', payload: { order: 6, fail: true } },
  amended: { key: 'order-1', payload: { order: 1, amended: true } },
};
type Label = keyof typeof MESSAGES;
const DEAD_AT_START = Object.values(MESSAGES).filter((m) => 'fail' in m.payload).length;

/** A node:http server on a free port; `url` has no trailing slash. */
async function listen(listener: RequestListener): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer(listener);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A form POST as a script sends it, redirects not followed. */
function post(url: string, form: Record<string, string>, headers: Record<string, string> = {}) {
  return fetch(url, {
    method: 'POST',
    body: new URLSearchParams(form),
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    redirect: 'manual',
  });
}

describe.skipIf(noChromium('admin page browser tests'))('admin page in Chromium', () => {
  let t: OutboxTestContext;
  let admin: Outbox;
  let browser: Browser;
  const ids = {} as Record<Label, string>;
  /** Messages billing's handler stops failing. */
  const healed = new Set<string>();
  const servers: { url: string; close(): Promise<void> }[] = [];
  /** No token, no authorize hook: reads only. */
  let open: string;
  /** A token, mounted under /outbox in an app. */
  let guarded: string;
  /** readOnly, with a token as well. */
  let readOnly: string;

  const billingStatus = async (label: Label) => {
    const { rows } = await t.pool.query<{ status: string }>(
      "SELECT status FROM outbox.audit_deliveries WHERE subscription = 'billing' AND message_id = $1",
      [ids[label]],
    );
    return rows.map((r) => r.status).join(',');
  };
  /** Billing's dead letters by message id, and every delivery's status: what a refused write must not change. */
  const snapshot = async () => {
    const dead = (await admin.deadLetters('billing')).map((d) => d.messageId).sort();
    const { rows } = await t.pool.query(
      'SELECT subscription, message_id::text, status FROM outbox.audit_deliveries ORDER BY 1, 2',
    );
    return { dead, rows };
  };
  const deliveryOf = async (label: Label) =>
    (await admin.deadLetters('billing')).find((d) => d.messageId === ids[label])?.deliveryId ?? '';

  async function newPage(): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10_000);
    return context.newPage();
  }
  const deadLettersUrl = (base: string) => `${base}/dead-letters?subscription=billing`;
  const rowOf = (page: Page, label: Label) =>
    page.locator('tbody tr', { has: page.getByRole('link', { name: ids[label], exact: true }) });
  const button = (within: Page | Locator, name: string) => within.getByRole('button', { name, exact: true });
  /** Replay, Discard and Replay all buttons on the page. */
  const writeButtons = (page: Page) =>
    page
      .getByRole('button')
      .filter({ hasText: /replay|discard/i })
      .count();

  async function signIn(page: Page, base: string): Promise<void> {
    await page.goto(deadLettersUrl(base));
    await page.locator('input[name="token"]').fill(TOKEN);
    await button(page, 'Sign in').click();
    // Signed in, no page offers the form again.
    await button(page, 'Sign in').waitFor({ state: 'detached' });
    await page.goto(deadLettersUrl(base));
  }

  beforeAll(async () => {
    t = await setupOutboxTest();
    await mkdir(DOCS, { recursive: true });
    browser = await launchBrowser();
    const consumer = t.outbox();
    consumer.subscribe('shipping', { topics: [TOPIC] }, () => {});
    consumer.subscribe('billing', { topics: [TOPIC], maxAttempts: 1 }, (m) => {
      if ('fail' in (m.payload as object) && !healed.has(m.id)) {
        const declined = new Error(`card declined for ${m.key}`);
        // The stored error is the stack; one line of it keeps the screenshots readable.
        declined.stack = `Error: ${declined.message}`;
        throw declined;
      }
    });
    await consumer.start();
    for (const [label, m] of Object.entries(MESSAGES)) {
      ids[label as Label] = (
        await consumer.publish(t.pool, TOPIC, m.payload, { key: m.key, headers: { 'x-source': label } })
      ).id;
    }
    const total = Object.keys(MESSAGES).length * 2;
    await waitFor('every delivery done or dead', async () => {
      const { rows } = await t.pool.query<{ status: string }>('SELECT status FROM outbox.audit_deliveries');
      return rows.length === total && rows.every((r) => r.status === 'done' || r.status === 'dead');
    });

    admin = t.outbox({ relay: { enabled: false } });
    const mounted = admin.adminHandler({ token: TOKEN, basePath: '/outbox' });
    for (const handler of [
      admin.adminHandler({}),
      (req, res) => (req.url?.startsWith('/outbox') ? mounted(req, res) : res.end('app')),
      admin.adminHandler({ readOnly: true, token: TOKEN }),
    ] satisfies RequestListener[]) {
      servers.push(await listen(handler));
    }
    [open, guarded, readOnly] = [
      servers[0]?.url ?? '',
      `${servers[1]?.url ?? ''}/outbox`,
      servers[2]?.url ?? '',
    ];
  });
  afterAll(async () => {
    await browser?.close();
    await Promise.all(servers.map((s) => s.close()));
    await t?.close();
  });

  it('lists every subscription on the overview with its counts, linking each to its dead letters', async () => {
    const page = await newPage();
    await page.goto(`${open}/`);
    expect(await page.locator('body').textContent()).toMatch(/backlog/i);
    const rows = await tableRows(page, /dead/i);
    const bySubscription = Object.fromEntries(rows.map((r) => [cell(r, /subscription|name/i), r]));
    expect(Object.keys(bySubscription).sort()).toEqual(['billing', 'shipping']);
    const counts = (name: string) =>
      [/^pending/i, /delayed/i, /in flight/i, /^dead/i, /done/i, /failed/i].map((c) =>
        parseInt(cell(bySubscription[name] ?? {}, c), 10),
      );
    expect(counts('billing')).toEqual([0, 0, 0, DEAD_AT_START, 2, DEAD_AT_START]);
    expect(counts('shipping')).toEqual([0, 0, 0, 0, 7, 0]);
    expect(cell(bySubscription.billing ?? {}, /oldest/i)).not.toBe('');
    await page.screenshot({ path: `${DOCS}admin-overview.png`, fullPage: true });

    await page.getByRole('link', { name: 'billing', exact: true }).click();
    await page.waitForURL(deadLettersUrl(open));
  });

  it('puts a key search and a link to the overview on every page, with links under the mount path', async () => {
    const page = await newPage();
    for (const [base, root] of [
      [open, '/'],
      [guarded, '/outbox/'],
    ] as const) {
      for (const path of [
        '/',
        '/dead-letters?subscription=billing',
        `/message?id=${ids.first}`,
        '/search?key=x',
      ]) {
        await page.goto(`${base}${path}`);
        expect(await page.locator('form input[name="key"]').count()).toBe(1);
        expect(await page.locator(`a[href="${root}"]`).count()).toBeGreaterThan(0);
      }
      await page.goto(`${base}/`);
      await expect(
        page.getByRole('link', { name: 'billing', exact: true }).getAttribute('href'),
      ).resolves.toBe(`${root}dead-letters?subscription=billing`);
      await page.goto(deadLettersUrl(base));
      await expect(rowOf(page, 'declined').getByRole('link').getAttribute('href')).resolves.toBe(
        `${root}message?id=${ids.declined}`,
      );
    }
  });

  it('lists each dead letter with its topic, key, attempts, error and payload, and no writes without a token or an authorize hook', async () => {
    const page = await newPage();
    await page.goto(deadLettersUrl(open));
    const rows = await tableRows(page, /error/i);
    expect(rows.map((r) => cell(r, /message|id/i)).sort()).toEqual((await snapshot()).dead);
    const declined = rows.find((r) => cell(r, /message|id/i) === ids.declined) ?? {};
    expect(cell(declined, /topic/i)).toBe(TOPIC);
    expect(cell(declined, /key/i)).toBe('order-6');
    expect(cell(declined, /attempt/i)).toBe('1');
    expect(cell(declined, /dead at/i)).not.toBe('');
    expect(cell(declined, /error/i)).toContain('card declined');
    expect(cell(declined, /payload/i)).toMatch(/"order":\s*6/);
    expect(await writeButtons(page)).toBe(0);

    const before = await snapshot();
    const refused = await post(`${open}/replay`, { subscription: 'billing', all: '1' });
    expect(refused.status).toBe(403);
    expect(await refused.text()).toMatch(/token or an authorize hook/i);
    expect(await snapshot()).toEqual(before);
    // The page itself says why it has no buttons, and what to configure.
    expect(await page.locator('body').textContent()).toMatch(/token or an authorize hook/i);
  });

  it('shows payloads, keys and errors as text: no script runs and no markup from them renders', async () => {
    const page = await newPage();
    for (const url of [
      deadLettersUrl(open),
      `${open}/message?id=${ids.hostile}`,
      `${open}/search?key=${encodeURIComponent(HOSTILE_KEY)}`,
    ]) {
      await page.goto(url);
      const text = (await page.locator('body').textContent()) ?? '';
      if (!url.includes('/search')) expect(text).toContain(HOSTILE_HTML);
      expect(text).toContain(HOSTILE_KEY);
      expect(await page.evaluate('typeof window.__pwned')).toBe('undefined');
      expect(await page.locator('script, img, b').count()).toBe(0);
    }
  });

  it('refuses writes on a token-protected page until signed in: no buttons, 403 without the cookie or with a wrong token', async () => {
    await expect(fetch(`${guarded.replace('/outbox', '')}/`).then((r) => r.text())).resolves.toBe('app');
    const page = await newPage();
    await page.goto(deadLettersUrl(guarded));
    expect(await rowOf(page, 'declined').count()).toBe(1);
    expect(await writeButtons(page)).toBe(0);
    await expect(button(page, 'Sign in').count()).resolves.toBe(1);

    const before = await snapshot();
    const form = { subscription: 'billing', id: await deliveryOf('declined') };
    const session = (await post(`${guarded}/login`, { token: TOKEN })).headers.get('set-cookie') ?? '';
    const forged = `${session.split('=')[0] ?? ''}=forged`;
    const wrongs: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong-token-1234' },
      { cookie: forged },
    ];
    for (const headers of wrongs) {
      expect((await post(`${guarded}/discard`, form, headers)).status).toBe(403);
    }
    const wrong = await post(`${guarded}/login`, { token: 'wrong-token-1234' });
    expect(wrong.status).toBe(403);
    expect(wrong.headers.get('set-cookie')).toBeNull();
    expect(await snapshot()).toEqual(before);
  });

  it('replays a dead letter from its Replay button after Sign in, and a consumer that now succeeds finishes it', async () => {
    const page = await newPage();
    await signIn(page, guarded);
    const cookies = await page.context().cookies();
    expect(cookies.length).toBeGreaterThan(0);
    expect(cookies.every((c) => c.httpOnly)).toBe(true);
    expect(await page.evaluate('document.cookie')).toBe('');
    await expect(button(page, 'Replay all').count()).resolves.toBe(1);
    await page.screenshot({ path: `${DOCS}admin-dead-letters.png`, fullPage: true });

    // From now on billing's handler takes this message.
    healed.add(ids.replayed);
    await button(rowOf(page, 'replayed'), 'Replay').click();
    await rowOf(page, 'replayed').waitFor({ state: 'detached' });
    expect(page.url()).toContain('/outbox/dead-letters?');
    expect(await page.locator('body').textContent()).toMatch(/replayed/i);
    expect((await snapshot()).dead).not.toContain(ids.replayed);
    await waitFor('the replayed dead letter done', async () => (await billingStatus('replayed')) === 'done');

    await page.goto(`${guarded}/message?id=${ids.replayed}`);
    const deliveries = await tableRows(page, /status/i);
    expect(Object.fromEntries(deliveries.map((d) => [cell(d, /subscription/i), cell(d, /status/i)]))).toEqual(
      {
        billing: 'done',
        shipping: 'done',
      },
    );
    const text = (await page.locator('body').textContent()) ?? '';
    expect(text).toContain(TOPIC);
    expect(text).toContain('order-2');
    expect(text).toContain('x-source');
    expect(text).toMatch(/"order":\s*2/);
    const failures = await tableRows(page, /failed/i);
    expect(failures.some((f) => Object.values(f).some((v) => v.includes('card declined')))).toBe(true);
  });

  it('discards a dead letter from its Discard button: it leaves the dead letters as cancelled', async () => {
    const page = await newPage();
    await signIn(page, guarded);
    await button(rowOf(page, 'discarded'), 'Discard').click();
    await rowOf(page, 'discarded').waitFor({ state: 'detached' });
    expect(await page.locator('body').textContent()).toMatch(/discarded/i);
    expect((await snapshot()).dead).not.toContain(ids.discarded);
    expect(await billingStatus('discarded')).toBe('cancelled');
  });

  it("takes a script's Authorization: Bearer token", async () => {
    healed.add(ids.scripted);
    const form = { subscription: 'billing', id: await deliveryOf('scripted') };
    const res = await post(`${guarded}/replay`, form, { authorization: `Bearer ${TOKEN}` });
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toMatch(/^\/outbox\/dead-letters\?/);
    await waitFor('the replayed dead letter done', async () => (await billingStatus('scripted')) === 'done');
  });

  it('refuses a POST from another site: an Origin of another host, and a form on another site in the browser', async () => {
    const before = await snapshot();
    const form = { subscription: 'billing', id: await deliveryOf('declined') };
    const foreign = await post(`${guarded}/discard`, form, {
      authorization: `Bearer ${TOKEN}`,
      origin: 'http://evil.example',
    });
    expect(foreign.status).toBe(403);

    const page = await newPage();
    await signIn(page, guarded);
    // localhost is another site than 127.0.0.1: the page there posts to the admin page with the signed-in browser.
    const evil = await listen((_req, res) => {
      res.setHeader('content-type', 'text/html');
      res.end(
        `<form method="post" action="${guarded}/discard"><input name="subscription" value="billing">` +
          `<input name="id" value="${form.id}"></form><script>document.forms[0].submit()</script>`,
      );
    });
    servers.push(evil);
    const answered = page.waitForResponse((r) => r.url() === `${guarded}/discard`);
    await page.goto(evil.url.replace('127.0.0.1', 'localhost'));
    expect((await answered).status()).toBe(403);
    expect(await snapshot()).toEqual(before);
  });

  it('renders no buttons read-only and refuses its POSTs with 403, even with the token', async () => {
    const page = await newPage();
    await page.goto(deadLettersUrl(readOnly));
    expect(await rowOf(page, 'declined').count()).toBe(1);
    expect(await writeButtons(page)).toBe(0);
    expect(await button(page, 'Sign in').count()).toBe(0);

    const before = await snapshot();
    const form = { subscription: 'billing', id: await deliveryOf('declined') };
    for (const headers of [{}, { authorization: `Bearer ${TOKEN}` }] as Record<string, string>[]) {
      expect((await post(`${readOnly}/discard`, form, headers)).status).toBe(403);
      expect((await post(`${readOnly}/replay`, { subscription: 'billing', all: '1' }, headers)).status).toBe(
        403,
      );
    }
    expect(await snapshot()).toEqual(before);
  });

  it("shows a message's journey: topic, key, headers, payload, each subscription's delivery and the failures", async () => {
    const page = await newPage();
    await page.goto(`${open}/message?id=${ids.declined}`);
    const text = (await page.locator('body').textContent()) ?? '';
    for (const shown of [TOPIC, 'order-6', 'x-source', 'declined']) expect(text).toContain(shown);
    expect(text).toMatch(/"order":\s*6/);
    const deliveries = await tableRows(page, /status/i);
    const billing = deliveries.find((d) => cell(d, /subscription/i) === 'billing') ?? {};
    expect(cell(billing, /status/i)).toBe('dead');
    expect(cell(billing, /attempts/i)).toBe('1');
    expect(cell(billing, /error/i)).toContain('card declined');
    expect(deliveries.find((d) => cell(d, /subscription/i) === 'shipping')).toBeDefined();
    const failures = await tableRows(page, /failed/i);
    expect(failures.length).toBeGreaterThan(0);
    await page.screenshot({ path: `${DOCS}admin-message.png`, fullPage: true });
  });

  it('finds the messages of a key from the header search, newest first, each linking to its page', async () => {
    const page = await newPage();
    await page.goto(`${open}/`);
    await page.locator('input[name="key"]').fill('order-1');
    await page.locator('input[name="key"]').press('Enter');
    await page.waitForURL(/\/search\?/);
    const links = page.locator('a[href*="/message?id="]');
    expect(await links.allTextContents()).toEqual([ids.amended, ids.first]);
    await links.first().click();
    await page.waitForURL(`${open}/message?id=${ids.amended}`);
    expect(await page.locator('body').textContent()).toContain('amended');
  });
});
