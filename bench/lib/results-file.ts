import { readFile, writeFile } from 'node:fs/promises';
import { SCENARIOS } from './report.js';

/**
 * bench/RESULTS.md is made of sections between marker comments, one per scenario plus a header. A run replaces
 * the sections it produced and keeps the others, so `npm run bench:latency` does not wipe the drain figures.
 * Each section carries its own run line, because ratios only mean something within one run. A scenario whose
 * figures belong to one server writes `<name>@<variant>` (relay-backlog@pg15): one section per variant, after the
 * scenario's place in the order.
 */
const ORDER = ['header', ...SCENARIOS] as const;
const SECTION = /<!-- bench:([a-z0-9@-]+):start -->\n([\s\S]*?)<!-- bench:\1:end -->/g;

async function readSections(file: string): Promise<Map<string, string>> {
  const sections = new Map<string, string>();
  let text = '';
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  for (const match of text.matchAll(SECTION)) {
    if (match[1] !== undefined && match[2] !== undefined) sections.set(match[1], match[2]);
  }
  return sections;
}

/** Sets the sections in `fresh`; a null body removes that section (a failure notice its variant replaced). */
export async function updateResults(file: string, fresh: Map<string, string | null>): Promise<void> {
  const sections = await readSections(file);
  for (const [name, body] of fresh) {
    if (body === null) sections.delete(name);
    else sections.set(name, body.endsWith('\n') ? body : `${body}\n`);
  }
  const parts = ['# pg-outbox benchmarks', ''];
  for (const name of ORDER) {
    const variants = [...sections.keys()].filter((key) => key.startsWith(`${name}@`)).sort();
    const keys = variants.length > 0 && !sections.has(name) ? variants : [name, ...variants];
    for (const key of keys) {
      const body = sections.get(key) ?? `## ${key}\n\n_Not run yet: \`npm run bench:${key}\`._\n`;
      parts.push(`<!-- bench:${key}:start -->`, body.trimEnd(), `<!-- bench:${key}:end -->`, '');
    }
  }
  await writeFile(file, parts.join('\n'));
}
