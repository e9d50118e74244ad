import test from 'ava';
import { logLevel, type LogLevel } from '../../src/dashboard/log-level.js';

// Lines as each engine writes them (PostgreSQL and Redis write everything to stderr): the level is the line's word.
const cases: Array<[string, LogLevel | undefined]> = [
  ['2026-11-30 03:00:00.123 UTC [1] LOG:  database system is ready to accept connections', 'info'],
  ['2026-11-30 03:00:00.123 UTC [80] uabc@orders FATAL:  password authentication failed for user "uabc"', 'error'],
  ['2026-11-30 03:00:00.123 UTC [80] uabc@orders ERROR:  relation "nope" does not exist at character 15', 'error'],
  ['2026-11-30 03:00:00.123 UTC [80] PANIC:  could not write to file "pg_wal/xlogtemp.80"', 'error'],
  ['2026-11-30 03:00:00.123 UTC [80] WARNING:  there is no transaction in progress', 'warning'],
  ['2026-11-30 03:00:00.123 UTC [80] INFO:  vacuuming "public.orders"', 'info'],
  ['2026-11-30 03:00:00.123 UTC [80] uabc@orders DETAIL:  Connection matched pg_hba.conf line 3', undefined],
  ['2026-11-30 03:00:00.123 UTC [80] uabc@orders STATEMENT:  SELECT * FROM nope', undefined],
  ['2026-11-30  3:00:00 0 [Note] InnoDB: Buffer pool(s) load completed at 261130  3:00:00', 'info'],
  ["2026-11-30  3:00:00 0 [Warning] Access denied for user 'x'@'172.17.0.1' (using password: YES)", 'warning'],
  ["2026-11-30  3:00:00 0 [ERROR] mariadbd: Can't lock aria control file", 'error'],
  ['1:M 30 Nov 2026 03:00:00.000 * Ready to accept connections tcp', 'info'],
  ['1:M 30 Nov 2026 03:00:00.000 # WARNING Memory overcommit must be enabled!', 'warning'],
  ['1:M 30 Nov 2026 03:00:00.000 - Accepted 172.17.0.1:50000', 'debug'],
  ['1:C 30 Nov 2026 03:00:00.000 . Client closed connection', 'debug'],
  ['2026-11-30 03:00:00.000000+00:00 [info] <0.230.0> Server startup complete; 5 plugins started.', 'info'],
  ['2026-11-30 03:00:00.000000+00:00 [warning] <0.230.0> Disk free space is low', 'warning'],
  ['2026-11-30 03:00:00.000000+00:00 [error] <0.811.0> Error on AMQP connection <0.811.0>', 'error'],
  ['2026-11-30T03:00:00: Error: Unable to open pwfile "/nope".', 'error'],
  ['2026-11-30T03:00:00: Warning: Mosquitto should not be run as root/administrator.', 'warning'],
  ['2026-11-30T03:00:00: New connection from 172.17.0.1:50000 on port 1883.', undefined],
  ['rsyslogd: error during parsing file /etc/rsyslog.conf, on or before line 3: invalid character', 'error'],
  ['rsyslogd: imtcp: could not create listener [v8.2302.0 try https://www.rsyslog.com/e/2077 ]', 'error'],
  ['time=2026-11-30T03:00:00Z level=warn msg="slow request"', 'warning'],
  ['{"level":"error","msg":"boom"}', 'error'],
  ['Setting up the administrator and the database.', undefined],
  ['an ERROR in prose is not a marker', undefined],
  ['', undefined],
];

for (const [line, level] of cases) {
  test(`${level ?? 'no level'}: ${line.slice(0, 70)}`, (t) => {
    t.is(logLevel(line), level);
  });
}
