/** Markdown tables and number formats shared by every scenario, so the console and RESULTS.md read the same. */

export interface Table {
  headers: string[];
  rows: string[][];
  /** How many leading columns hold text (left-aligned); the rest hold figures (right-aligned). @defaultValue 1 */
  textColumns?: number;
}

export function markdownTable({ headers, rows, textColumns = 1 }: Table): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const isText = (i: number) => i < textColumns;
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (isText(i) ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `| ${widths.map((w, i) => (isText(i) ? '-'.repeat(w) : `${'-'.repeat(Math.max(1, w - 1))}:`)).join(' | ')} |`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/** 12345.6 -> "12,346". */
export function int(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a';
}

/** Milliseconds with a precision that suits their size. */
export function ms(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** A ratio such as "2.31×". */
export function ratio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}×` : 'n/a';
}

/** "min–max" of repeated runs. */
export function range(min: number, max: number, format: (v: number) => string): string {
  return `${format(min)}–${format(max)}`;
}
