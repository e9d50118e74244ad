import type { OverviewRow } from './service.js';

const escape = (text: string) => text.replace(/[&<>"']/g, (char) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[char]!);

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${escape(title)}</title>
<link rel="stylesheet" href="/dashboard/assets/style.css">
<link rel="icon" href="data:,">
</head>
<body>
${body}
</body>
</html>
`;
}

/**
 * Log lines as the page shows them; the script renders later lines the same way (see lineElement in app.js). The
 * colour is the level the line states (level-*), never its stream: PostgreSQL and Redis write every line to stderr.
 */
export function logLinesHtml(lines: Array<{ stream: string; time: string; text: string; level?: string }>): string {
  return lines
    .map((line) => {
      const stream = line.stream === 'stderr' ? 'stderr' : 'stdout';
      const level = line.level ? ` level-${escape(line.level)}` : '';
      return `<div class="line ${stream}${level}" title="${escape(line.time)}"><span class="time">${escape(line.time.slice(11, 23))}</span><span class="stream">${stream}</span><span class="text">${escape(line.text)}</span></div>`;
    })
    .join('');
}

export function problemPage(title: string, text: string): string {
  return page(title, `<main class="narrow"><h1>${escape(title)}</h1><p>${escape(text)}</p></main>`);
}

function age(iso: string): string {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

/** Every instance of this broker, for operators (behind the broker's credentials). */
export function overviewPage(rows: OverviewRow[], link: (id: string) => string): string {
  const body =
    rows.length === 0
      ? '<p class="muted">No service instances yet.</p>'
      : `<div class="scroll"><table class="overview">
<thead><tr><th>Instance</th><th>Offering</th><th>Plan</th><th>State</th><th>Host:port</th><th>Age</th></tr></thead>
<tbody>
${rows
  .map(
    (row) => `<tr>
<td><a href="${escape(link(row.id))}">${escape(row.name ?? row.id)}</a>${row.name ? `<div class="muted small">${escape(row.id)}</div>` : ''}</td>
<td data-label="Offering">${escape(row.offering)}</td><td data-label="Plan">${escape(row.plan)}</td>
<td><span class="state state-${escape(row.state)}">${escape(row.state)}</span></td>
<td class="mono endpoint">${escape(row.endpoint ?? '—')}</td>
<td data-label="Age" title="${escape(row.createdAt)}">${age(row.createdAt)}</td>
</tr>`,
  )
  .join('\n')}
</tbody></table></div>`;
  return page(
    'Service instances',
    `<header class="bar"><h1>Service instances</h1><span class="muted">${rows.length} in all</span></header>
<main>${body}</main>`,
  );
}
