import { accessSync, constants } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

/**
 * The Chromium the browser tests drive: Debian's (`apt-get install chromium`), or CHROMIUM_PATH. playwright-core
 * downloads no browser of its own.
 */
export const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * True when there is no Chromium to drive, after printing one line that says which tests skip and how to get them:
 * `describe.skipIf(noChromium('admin page browser tests'))(...)`. A new user's `npm test` passes without Chromium;
 * CI installs it (.ci/run).
 */
export function noChromium(tests: string): boolean {
  if (executable(chromiumPath)) return false;
  console.warn(`${tests} skipped: no Chromium at ${chromiumPath} (apt-get install chromium)`);
  return true;
}

/** A headless Chromium; `--no-sandbox` because CI and containers run it as root. Close it in afterAll. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox'] });
}

/** A table row as its header's text → the cell's text, both trimmed. */
export type TableRow = Record<string, string>;

/**
 * The body rows of the one table on the page whose header row has a cell matching `column`; rows with fewer cells
 * than the header (a "nothing here" line spanning the table) are left out.
 */
export async function tableRows(page: Page, column: RegExp): Promise<TableRow[]> {
  const table = page.locator('table', { has: page.locator('thead th', { hasText: column }) });
  const tables = await table.count();
  if (tables !== 1) throw new Error(`${tables} tables have a column ${String(column)}; name one of them`);
  const headers = (await table.locator('thead th').allTextContents()).map((h) => h.trim());
  const rows: TableRow[] = [];
  for (const tr of await table.locator('tbody tr').all()) {
    const cells = (await tr.locator('td').allTextContents()).map((c) => c.trim());
    if (cells.length === headers.length)
      rows.push(Object.fromEntries(headers.map((h, i) => [h, cells[i] ?? ''])));
  }
  return rows;
}

/** The cell of the column whose header matches `column`; throws naming the headers when none does. */
export function cell(row: TableRow, column: RegExp): string {
  const header = Object.keys(row).find((h) => column.test(h));
  if (header === undefined)
    throw new Error(`no column ${String(column)} among ${JSON.stringify(Object.keys(row))}`);
  return row[header] ?? '';
}
