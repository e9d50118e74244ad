// Instance dashboard: details, usage, processes and logs of one service instance. No framework, no CDN.
const base = location.pathname.replace(/\/+$/, '');
const api = (path) => `${base}/api/${path}`;
const $ = (id) => document.getElementById(id);

async function getJson(path) {
  const response = await fetch(api(path), { credentials: 'same-origin' });
  if (response.status === 401) {
    location.reload(); // The session ended: the server answers with the explanation page.
    throw new Error('session ended');
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const bytes = (value) => {
  if (!Number.isFinite(value)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
};
const time = (iso) => (iso && !iso.startsWith('0001') ? new Date(iso).toLocaleString() : '—');
const ago = (iso) => {
  if (!iso || iso.startsWith('0001')) return '';
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
};
const element = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// Details and usage

/** How an operation in progress on a ready instance reads; others read "<type> in progress". */
const RUNNING_LABEL = { restart: 'restarting', 'tls-renewal': 'renewing TLS' };

/**
 * The pill: what the container really does (running or healthy green; starting, restarting or an operation amber;
 * exited, dead, missing or unhealthy red), never the record's "ready" alone.
 */
function statusOf(details) {
  const container = details.container;
  const operation = details.lastOperation;
  if (operation?.state === 'in progress') return [details.state === 'ready' ? RUNNING_LABEL[operation.type] ?? `${operation.type} in progress` : details.state, 'warn'];
  if (details.state === 'failed') return ['failed', 'bad'];
  if (!container) return [details.state === 'ready' ? 'missing' : details.state, 'bad'];
  if (container.running && container.status !== 'paused') {
    if (container.health === 'starting') return ['starting', 'warn'];
    if (container.health === 'unhealthy') return ['running · unhealthy', 'bad'];
    return [container.health ? `running · ${container.health}` : 'running', 'ok'];
  }
  if (container.status === 'restarting' || container.status === 'paused') return [container.status, 'warn'];
  return [container.status, 'bad'];
}

/** The live bindings by the name the platform gave them (else their id); never credentials. */
function renderBindings(bindings) {
  $('binding-count').textContent = bindings.length ? String(bindings.length) : '';
  if (bindings.length === 0) {
    $('bindings').replaceChildren(element('li', 'muted', 'No bindings: apps get credentials by binding the instance.'));
    return;
  }
  $('bindings').replaceChildren(
    ...bindings.map((binding) => {
      const item = element('li');
      item.append(element('span', 'binding-name', binding.name ?? binding.id));
      if (binding.name) item.append(element('span', 'muted small mono', binding.id));
      const since = element('span', 'muted small', `bound ${ago(binding.createdAt)}`);
      since.title = binding.createdAt;
      item.append(since);
      return item;
    }),
  );
}

function renderDetails(details) {
  document.title = `${details.name ?? details.id} · ${details.offering.displayName || details.offering.name}`;
  $('title').textContent = details.name ?? `${details.offering.displayName || details.offering.name} instance`;
  $('instance-id').textContent = details.id;
  const [label, tone] = statusOf(details);
  const state = $('state');
  state.textContent = label;
  state.className = `state ${tone}`;
  state.title = details.health?.summary ?? '';
  const explanation = $('explanation');
  explanation.hidden = !details.explanation;
  explanation.textContent = details.explanation ?? '';
  explanation.className = tone === 'bad' ? 'notice bad' : 'notice';
  $('restart-name').textContent = details.name ?? details.id;
  renderBindings(details.bindingList ?? []);
  showOperation(details.lastOperation);

  const op = details.lastOperation;
  const limits = details.plan.limits;
  const rows = [
    ['Offering', `${details.offering.displayName || details.offering.name} (${details.offering.name})`],
    ['Plan', limits ? `${details.plan.name} · ${limits.memoryMb} MiB, ${limits.cpus} CPU, ${limits.pids} processes` : details.plan.name],
    ['Instance id', details.id],
    ['State', details.health && details.health.state !== 'running' ? `${details.state} · ${details.health.summary}` : details.state],
    ['Last operation', op ? `${op.type}: ${op.state} — ${op.description} (${time(op.at)})` : '—'],
    ['Image', `${details.image} (version ${details.version})`],
    ['Host:port', details.endpoints.join(', ') || '—'],
    ['Created', `${time(details.createdAt)} ${ago(details.createdAt)}`],
    ['Started', details.container ? `${time(details.container.startedAt)} ${ago(details.container.startedAt)}` : '—'],
    ['Restarts', details.container ? String(details.container.restartCount) : '—'],
    ['Health', details.container?.health ?? (details.container?.running ? 'running (no health check)' : '—')],
  ];
  const list = $('details');
  const valueClass = (name) => (name === 'Instance id' || name === 'Host:port' ? 'mono' : name === 'State' && tone === 'bad' ? 'bad' : '');
  list.replaceChildren(...rows.flatMap(([name, value]) => [element('dt', '', name), element('dd', valueClass(name), value)]));

}

function renderUsage(usage, limits) {
  const meters = [
    ['CPU', usage ? `${usage.cpuPercent.toFixed(1)} %` : '—', limits ? `of ${limits.cpus * 100} %` : '', usage && limits ? usage.cpuPercent / (limits.cpus * 100) : 0],
    ['Memory', usage ? bytes(usage.memoryBytes) : '—', limits ? `of ${bytes(limits.memoryMb * 1048576)}` : '', usage && limits ? usage.memoryBytes / (limits.memoryMb * 1048576) : 0],
    ['Processes', usage ? String(usage.pids) : '—', limits ? `of ${limits.pids}` : '', usage && limits ? usage.pids / limits.pids : 0],
    ['Network', usage ? `↓ ${bytes(usage.networkRxBytes)} ↑ ${bytes(usage.networkTxBytes)}` : '—', 'since start', 0],
  ];
  $('usage').replaceChildren(...meters.map(([name, value, limit, fraction]) => {
    const meter = element('div', 'meter');
    meter.append(element('div', 'meter-name', name), element('div', 'meter-value', value), element('div', 'muted small', limit));
    const track = element('div', 'track');
    const fill = element('div', `fill${fraction > 0.85 ? ' high' : ''}`);
    fill.style.width = `${Math.min(100, Math.round(fraction * 100))}%`;
    track.append(fill);
    meter.append(track);
    return meter;
  }));
}

let limits;

async function refreshDetails() {
  try {
    const details = await getJson('details');
    limits = details.plan.limits;
    renderDetails(details);
  } catch (error) {
    console.warn(error);
  }
}

async function refreshUsage() {
  try {
    renderUsage((await getJson('usage')).usage, limits);
  } catch (error) {
    console.warn(error);
  }
}

// Processes

async function refreshTop() {
  try {
    const top = await getJson('top');
    const table = $('top');
    if (top.processes.length === 0) {
      table.replaceChildren(element('caption', 'muted', top.explanation ?? 'No processes.'));
    } else {
      const head = element('thead');
      const headRow = element('tr');
      top.titles.forEach((title) => headRow.append(element('th', '', title)));
      head.append(headRow);
      const body = element('tbody');
      for (const row of top.processes) {
        const tr = element('tr');
        row.forEach((cell, index) => {
          const command = index === row.length - 1;
          const td = element('td', command ? 'mono command' : 'mono', cell);
          // A phone stacks the cells (style.css); each says what it is.
          if (!command && top.titles[index]) td.dataset.label = top.titles[index];
          tr.append(td);
        });
        body.append(tr);
      }
      table.replaceChildren(head, body);
    }
    $('top-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    console.warn(error);
  }
}

// Backups

const backupsPanel = { timer: undefined };

function scheduleText(schedule) {
  const box = $('backup-schedule');
  box.hidden = false;
  if (!schedule || schedule.source === 'off' || !schedule.cron) {
    box.replaceChildren(`No backup schedule: backups are made on demand.${schedule?.last_success ? ` Last success ${time(schedule.last_success)} (${ago(schedule.last_success)}).` : ''}`);
    return;
  }
  const parts = [
    `Scheduled ${schedule.source === 'broker' ? "by the broker's default" : 'by this instance'}: `,
    element('code', '', schedule.cron),
    ` · next run ${schedule.next ? `${time(schedule.next)}` : '—'} · last success ${schedule.last_success ? `${time(schedule.last_success)} (${ago(schedule.last_success)})` : 'never'}`,
  ];
  if (schedule.last_failure) {
    parts.push(' · ', element('span', 'bad', `last failure ${time(schedule.last_failure.at)}: ${schedule.last_failure.description}`));
  }
  box.replaceChildren(...parts);
}

function renderBackups(panel) {
  const table = $('backups');
  const button = $('backup-now');
  if (!panel.supported) {
    button.hidden = true;
    $('backup-schedule').hidden = true;
    table.replaceChildren(element('caption', 'muted', `This instance has no backups: ${panel.reason.replace(/\.$/, '')}.`));
    return;
  }
  button.hidden = false;
  scheduleText(panel.schedule);
  if (panel.backups.length === 0) {
    table.replaceChildren(element('caption', 'muted', 'No backups yet. “Back up now” makes one.'));
    return;
  }
  const head = element('thead');
  const headRow = element('tr');
  ['Created', 'State', 'Origin', 'Size', 'Backup id', ''].forEach((title) => headRow.append(element('th', '', title)));
  head.append(headRow);
  const body = element('tbody');
  for (const backup of panel.backups) {
    const row = element('tr');
    row.dataset.backupId = backup.id;
    row.dataset.state = backup.state;
    const created = element('td', '', time(backup.created));
    created.title = backup.created;
    const state = element('td');
    state.append(element('span', `state state-${backup.state.replace(/\s+/g, '-')}`, backup.state));
    const size = element('td', 'size', backup.size === undefined ? '—' : bytes(backup.size));
    if (backup.dump_size !== undefined) size.title = `dump ${bytes(backup.dump_size)}, stored compressed and encrypted ${bytes(backup.size)}`;
    const action = element('td');
    if (backup.state === 'succeeded') {
      const link = element('a', 'button', 'Download');
      link.href = api(`backups/${encodeURIComponent(backup.id)}/download`);
      link.setAttribute('download', '');
      action.append(link);
    }
    row.append(created, state, element('td', '', backup.origin), size, element('td', 'mono', backup.id), action);
    body.append(row);
    if (backup.state === 'failed' && backup.description) {
      const failure = element('tr', 'failure-row');
      const cell = element('td', 'failure small', backup.description);
      cell.colSpan = 6;
      failure.append(cell);
      body.append(failure);
    }
  }
  table.replaceChildren(head, body);
}

async function refreshBackups() {
  clearTimeout(backupsPanel.timer);
  let busy = false;
  try {
    const panel = await getJson('backups');
    renderBackups(panel);
    busy = panel.backups.some((backup) => backup.state === 'in progress');
  } catch (error) {
    console.warn(error);
  }
  // Every two seconds while a backup runs, so it is seen to end; otherwise every fifteen.
  backupsPanel.timer = setTimeout(refreshBackups, busy ? 2000 : 15000);
}

async function backUpNow() {
  const button = $('backup-now');
  const message = $('backup-message');
  button.disabled = true;
  message.className = 'muted small';
  message.textContent = 'Starting a backup…';
  try {
    const response = await fetch(api('backups'), {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken },
      body: '{}',
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.description ?? `HTTP ${response.status}`);
    message.textContent = `Backup ${answer.id} started.`;
  } catch (error) {
    message.className = 'small bad';
    message.textContent = `No backup: ${error.message}`;
  } finally {
    button.disabled = false;
    refreshBackups();
  }
}

// Restart: confirmed in a dialog, sent with the page's CSRF token, followed until it ends

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
const restarting = { watching: false, timer: undefined };

async function restart() {
  const button = $('restart');
  button.disabled = true;
  showNotice('Restart requested…', '');
  try {
    const response = await fetch(api('restart'), {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-CSRF-Token': csrfToken },
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.description ?? `HTTP ${response.status}`);
    restarting.watching = true;
    pollOperation();
  } catch (error) {
    button.disabled = false;
    showNotice(`No restart: ${error.message}`, 'bad');
  }
}

/** Every second while an operation runs, so its progress shows and its end is seen at once. */
function pollOperation() {
  clearTimeout(restarting.timer);
  restarting.timer = setTimeout(async () => {
    await refreshDetails();
    if (restarting.watching) pollOperation();
  }, 1000);
}

function showNotice(text, tone) {
  const box = $('operation');
  box.hidden = !text;
  box.textContent = text;
  box.className = `notice${tone ? ` ${tone}` : ''}`;
}

/** The instance's last operation while it runs, and how a restart started here ended. */
function showOperation(operation) {
  const running = operation?.state === 'in progress';
  $('restart').disabled = running;
  if (running) {
    const label = RUNNING_LABEL[operation.type] ?? `${operation.type} in progress`;
    showNotice(`${label[0].toUpperCase()}${label.slice(1)}: ${operation.description}`, '');
    if (!restarting.watching) {
      restarting.watching = true;
      pollOperation();
    }
    return;
  }
  if (!restarting.watching) return;
  restarting.watching = false;
  showNotice(operation ? operation.description : '', operation?.state === 'failed' ? 'bad' : 'ok');
  refreshTop();
  loadLogs()
    .catch(console.warn)
    .finally(() => follow($('log-follow').checked));
}

// Logs

const logs = { lines: [], filter: '', source: undefined, retry: undefined };
const MAX_LINES = 20000;

// The engine's UTC time, as the server renders the first lines into the page (so nothing changes when this takes over).
function lineElement(line) {
  const row = element('div', `line ${line.stream}${line.level ? ` level-${line.level}` : ''}`);
  row.append(element('span', 'time', line.time.slice(11, 23)));
  row.append(element('span', 'stream', line.stream));
  row.append(element('span', 'text', line.text));
  row.title = line.time;
  return row;
}

const matches = (line) => !logs.filter || line.text.toLowerCase().includes(logs.filter);

function renderLogs() {
  const box = $('logs');
  const shown = logs.lines.filter(matches);
  const fragment = document.createDocumentFragment();
  for (const line of shown) fragment.append(lineElement(line));
  box.replaceChildren(fragment);
  box.scrollTop = box.scrollHeight;
  $('log-count').textContent = logs.filter ? `${shown.length} of ${logs.lines.length} lines` : `${logs.lines.length} lines`;
}

function appendLine(line) {
  logs.lines.push(line);
  if (logs.lines.length > MAX_LINES) logs.lines.splice(0, logs.lines.length - MAX_LINES);
  if (!matches(line)) return;
  const box = $('logs');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(lineElement(line));
  if (atBottom) box.scrollTop = box.scrollHeight;
  $('log-count').textContent = logs.filter ? `${box.childElementCount} of ${logs.lines.length} lines` : `${logs.lines.length} lines`;
}

/** The lines the page arrived with (rendered by the server), as data for filtering and following. */
function renderedLines() {
  return [...$('logs').children].map((row) => ({
    stream: row.classList.contains('stderr') ? 'stderr' : 'stdout',
    level: [...row.classList].find((name) => name.startsWith('level-'))?.slice(6),
    time: row.title,
    text: row.querySelector('.text')?.textContent ?? '',
  }));
}

async function loadLogs() {
  const data = await getJson(`logs?tail=${$('log-tail').value}`);
  logs.lines = data.lines;
  renderLogs();
  if (data.explanation) $('log-count').textContent = data.explanation;
}

function follow(on) {
  logs.source?.close();
  logs.source = undefined;
  if (!on) return;
  const source = new EventSource(api('logs/stream'));
  source.onmessage = (event) => appendLine(JSON.parse(event.data));
  // The stream ends with the container (a restart, a crash): pick up what it logged since, then follow again.
  source.addEventListener('end', () => {
    source.close();
    if (logs.source !== source) return;
    logs.source = undefined;
    clearTimeout(logs.retry);
    logs.retry = setTimeout(() => {
      if ($('log-follow').checked && !logs.source) loadLogs().catch(console.warn).finally(() => follow($('log-follow').checked));
    }, 3000);
  });
  logs.source = source;
}

$('log-filter').addEventListener('input', (event) => {
  logs.filter = event.target.value.trim().toLowerCase();
  renderLogs();
});
$('log-tail').addEventListener('change', () => loadLogs().catch(console.warn));
$('log-follow').addEventListener('change', (event) => follow(event.target.checked));
$('top-refresh').addEventListener('click', refreshTop);
$('backup-now').addEventListener('click', backUpNow);
$('restart').addEventListener('click', () => $('restart-dialog').showModal());
$('restart-cancel').addEventListener('click', () => $('restart-dialog').close());
$('restart-confirm').addEventListener('click', () => {
  $('restart-dialog').close();
  restart();
});
$('log-download').href = api('logs/download');

// The page arrived with the latest lines; show them at the bottom and follow from there.
logs.lines = renderedLines();
$('logs').scrollTop = $('logs').scrollHeight;
$('log-count').textContent = `${logs.lines.length} lines`;
follow($('log-follow').checked);
refreshDetails().then(refreshUsage);
refreshTop();
refreshBackups();
setInterval(refreshDetails, 5000);
setInterval(refreshUsage, 5000);
setInterval(refreshTop, 5000);
