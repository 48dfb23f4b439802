import { readFile, writeFile } from 'node:fs/promises';
import { SCENARIOS } from './report.js';

/**
 * bench/RESULTS.md is made of sections between marker comments, one per scenario plus a header. A run replaces
 * the sections it produced and keeps the others, so `npm run bench:latency` does not wipe the drain figures.
 * Each section carries its own run line, because ratios only mean something within one run.
 */
const ORDER = ['header', ...SCENARIOS] as const;
const SECTION = /<!-- bench:([a-z]+):start -->\n([\s\S]*?)<!-- bench:\1:end -->/g;

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

export async function updateResults(file: string, fresh: Map<string, string>): Promise<void> {
  const sections = await readSections(file);
  for (const [name, body] of fresh) sections.set(name, body.endsWith('\n') ? body : `${body}\n`);
  const parts = ['# pg-outbox benchmarks', ''];
  for (const name of ORDER) {
    const body = sections.get(name) ?? `## ${name}\n\n_Not run yet: \`npm run bench:${name}\`._\n`;
    parts.push(`<!-- bench:${name}:start -->`, body.trimEnd(), `<!-- bench:${name}:end -->`, '');
  }
  await writeFile(file, parts.join('\n'));
}
