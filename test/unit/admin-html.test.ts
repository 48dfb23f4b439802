import { describe, expect, it } from 'vitest';
import { escapeHtml, html, query } from '../../src/admin-ui/html.js';

describe('admin page html', () => {
  it('escapes every interpolated value, nested arrays included, and keeps its own markup', () => {
    const evil = `<script>alert("x")</script>&'`;
    // prettier-ignore
    const page = html`<p title="${evil}">${evil}${[evil, html`<b>${evil}</b>`]}${null}${false}${undefined}${0}</p>`;
    const escaped = '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;';
    expect(page.text).toBe(`<p title="${escaped}">${escaped}${escaped}<b>${escaped}</b>0</p>`);
    expect(page.text).not.toContain('<script>');
  });

  it('escapes the five characters HTML gives meaning to and nothing else', () => {
    expect(escapeHtml(`a&b<c>d"e'f ü`)).toBe('a&amp;b&lt;c&gt;d&quot;e&#39;f ü');
  });

  it('builds query strings with encoded values', () => {
    expect(query({ subscription: 'a b&c', after: undefined })).toBe('?subscription=a+b%26c');
    expect(query({})).toBe('');
  });
});
