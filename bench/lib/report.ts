import { markdownTable, type Table } from './table.js';

export const SCENARIOS = [
  'publish',
  'drain',
  'fanout',
  'latency',
  'lateness',
  'backlog',
  'relay-backlog',
  'audit-cost',
  'retention',
  'status-scale',
  'observability-cost',
  'flow-control',
  'forward',
  'scale',
] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface TargetCheck {
  /** The target as the issue states it, e.g. "publish in tx ≥ 0.9× raw insert". */
  target: string;
  met: boolean;
  /** The numbers behind the verdict. */
  detail: string;
}

/** What a scenario hands back: rendered the same way on the console and in RESULTS.md. */
export interface ScenarioReport {
  name: ScenarioName;
  title: string;
  /**
   * Set when a scenario's figures belong to one server (relay backlog: one section per PostgreSQL major version),
   * so that a run on another server adds its own section instead of replacing this one.
   */
  variant?: string;
  /** How the figures were repeated, when not "N repetitions per system" (backlog: one pass). */
  repetitions?: string;
  /** What is measured for each system and with which settings; a reader needs it to trust the ratios. */
  method: string[];
  tables: { caption: string; table: Table }[];
  /** "ours / peer" lines. */
  ratios: string[];
  targets: TargetCheck[];
  notes: string[];
  /** Extra verbatim blocks (EXPLAIN plans). */
  blocks?: { caption: string; text: string }[];
}

export function renderReport(report: ScenarioReport, runLine: string): string {
  const parts: string[] = [`## ${report.title}`, '', `_${runLine}_`, ''];
  for (const m of report.method) parts.push(`- ${m}`);
  parts.push('');
  for (const { caption, table } of report.tables) {
    parts.push(`**${caption}**`, '', markdownTable(table), '');
  }
  if (report.ratios.length > 0) {
    parts.push('Ratios (same run):', '', ...report.ratios.map((r) => `- ${r}`), '');
  }
  if (report.targets.length > 0) {
    parts.push('Targets:', '');
    for (const t of report.targets) parts.push(`- ${t.met ? 'MET' : 'NOT MET'}: ${t.target} — ${t.detail}`);
    parts.push('');
  }
  for (const n of report.notes) parts.push(`> ${n}`, '');
  for (const b of report.blocks ?? []) parts.push(`**${b.caption}**`, '', '```', b.text, '```', '');
  return parts.join('\n').trimEnd() + '\n';
}
