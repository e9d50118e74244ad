/** A log line's severity as the line itself states it; undefined when it states none (the page leaves it neutral). */
export type LogLevel = 'error' | 'warning' | 'info' | 'debug';

/**
 * Each engine's own way of saying how bad a line is. The stream says nothing: PostgreSQL and Redis write everything
 * to stderr, so colouring by stream paints a healthy server red. Only the line's own marker counts.
 */
const MARKERS: Array<[RegExp, (match: RegExpMatchArray) => LogLevel | undefined]> = [
  // Redis: "1:M 30 Nov 2026 03:00:00.000 * Ready to accept connections"; # warning, * notice, - verbose, . debug.
  [/^\d+:[XCSM] \d{1,2} \w{3} \d{4} [\d:.]+ ([#*.-]) /, ([, mark]) => ({ '#': 'warning', '*': 'info', '-': 'debug', '.': 'debug' })[mark!] as LogLevel],
  // RabbitMQ: "2026-11-30 03:00:00.000000+00:00 [info] <0.230.0> …"; older releases wrote [warn].
  [/^\S+ \S+ \[(critical|alert|emergency|error|warning|warn|notice|info|debug)\] /, ([, word]) => syslogWord(word!)],
  // Mosquitto: "2026-11-30T03:00:00: Error: Unable to open pwfile" (or epoch seconds); its other lines are notices: neutral.
  [/^(?:\d{9,}|\d{4}-\d\d-\d\dT[\d:]+): (Error|Warning|Notice|Information|Debug): /, ([, word]) => syslogWord(word!.toLowerCase())],
  // rsyslog: "rsyslogd: error during parsing file …", "rsyslogd: warning: …", "… [v8.2302.0 try https://www.rsyslog.com/e/2207 ]".
  [/^rsyslogd(?:\[\d+\])?: (error|warning)\b/i, ([, word]) => syslogWord(word!.toLowerCase())],
  [/rsyslog\.com\/e\/\d+ \]$/, () => 'error'],
  // PostgreSQL: "2026-11-30 03:00:00.000 UTC [57] LOG:  database system is ready to accept connections".
  [/(?:^|\s)(PANIC|FATAL|ERROR|WARNING|NOTICE|INFO|LOG|DEBUG[1-5]?|DETAIL|HINT|STATEMENT|CONTEXT):\s/, ([, word]) => postgres(word!)],
  // MariaDB and MySQL: "2026-11-30  3:00:00 0 [Note] InnoDB: …", [Warning], [ERROR], [System].
  [/\[(ERROR|Warning|Note|System)\]/, ([, word]) => ({ ERROR: 'error', Warning: 'warning', Note: 'info', System: 'info' })[word!] as LogLevel],
  // Structured loggers: level=error, "level":"warn", lvl=info.
  [/\b(?:level|lvl|severity)"?\s*[=:]\s*"?(crit\w*|fatal|panic|err\w*|warn\w*|info\w*|notice|debug|trace)\b/i, ([, word]) => syslogWord(word!.toLowerCase())],
];

function postgres(word: string): LogLevel | undefined {
  if (word === 'PANIC' || word === 'FATAL' || word === 'ERROR') return 'error';
  if (word === 'WARNING') return 'warning';
  if (word.startsWith('DEBUG')) return 'debug';
  // DETAIL, HINT, STATEMENT and CONTEXT belong to the line before them: neutral.
  if (word === 'LOG' || word === 'INFO' || word === 'NOTICE') return 'info';
  return undefined;
}

function syslogWord(word: string): LogLevel | undefined {
  if (/^(crit|fatal|panic|err|alert|emerg)/.test(word)) return 'error';
  if (word.startsWith('warn')) return 'warning';
  if (/^(info|notice)/.test(word)) return 'info';
  if (/^(debug|trace)/.test(word)) return 'debug';
  return undefined;
}

/** The level a log line states (first marker that matches), or undefined. */
export function logLevel(text: string): LogLevel | undefined {
  for (const [pattern, level] of MARKERS) {
    const match = text.match(pattern);
    if (match) return level(match);
  }
  return undefined;
}
