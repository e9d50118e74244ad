// The Engine card: the numbers the offering's stats script reports (connections, memory, messages, ...), why there
// are none when the engine cannot be asked, and links such as the engine's own web UI. Refreshed every 10 s.
const card = document.getElementById('engine');
const base = location.pathname.replace(/\/+$/, '');

const element = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

const number = (value, digits = 0) => value.toLocaleString(undefined, { maximumFractionDigits: digits });
const bytes = (value) => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
};
const seconds = (value) => (value < 120 ? `${number(value, 1)} s` : value < 7200 ? `${number(value / 60, 1)} min` : `${number(value / 3600, 1)} h`);

/** A value in its unit, for people; "—" when the engine could not say. */
function shown(value, unit) {
  if (value === null || value === undefined) return '—';
  switch (unit) {
    case 'bytes': return bytes(value);
    case 'seconds': return seconds(value);
    case 'per_second': return `${number(value, 1)} /s`;
    case 'ratio': return `${number(value * 100, 1)} %`;
    default: return number(value);
  }
}

function render(engine) {
  const reason = document.getElementById('engine-reason');
  reason.hidden = !engine.reason;
  reason.textContent = engine.reason ? `No engine numbers: ${engine.reason.replace(/\.$/, '')}.` : '';
  reason.className = engine.supported ? 'notice bad' : 'muted small';
  document.getElementById('engine-updated').textContent = engine.at && !engine.reason ? `read ${new Date(engine.at).toLocaleTimeString()}` : '';

  const byName = new Map(engine.stats.map((stat) => [stat.name, stat]));
  // A stat that is another's limit is shown under it ("of 100"), not on its own.
  const limits = new Set(engine.stats.map((stat) => stat.of).filter((name) => name && byName.get(name)?.value !== null));
  const meters = engine.stats.filter((stat) => !limits.has(stat.name)).map((stat) => {
    const meter = element('div', 'meter');
    meter.dataset.stat = stat.name;
    meter.append(element('div', 'meter-name', stat.label), element('div', 'meter-value', shown(stat.value, stat.unit)));
    const limit = stat.of ? byName.get(stat.of) : undefined;
    if (limit && limit.value !== null) {
      meter.append(element('div', 'muted small', `of ${shown(limit.value, limit.unit)}`));
      const fraction = stat.value === null || limit.value <= 0 ? 0 : stat.value / limit.value;
      const track = element('div', 'track');
      const fill = element('div', `fill${fraction > 0.85 ? ' high' : ''}`);
      fill.style.width = `${Math.min(100, Math.round(fraction * 100))}%`;
      track.append(fill);
      meter.append(track);
    }
    return meter;
  });
  document.getElementById('engine-stats').replaceChildren(...meters);

  const links = document.getElementById('engine-links');
  links.hidden = engine.links.length === 0;
  links.replaceChildren(...engine.links.map((link) => {
    const item = element('li');
    const anchor = element('a', 'mono', link.url);
    anchor.href = link.url;
    anchor.target = '_blank';
    anchor.rel = 'noopener noreferrer';
    item.append(element('span', '', `${link.label}: `), anchor);
    if (link.note) item.append(element('span', 'muted small', ` ${link.note}`));
    return item;
  }));
}

async function refresh() {
  try {
    const response = await fetch(`${base}/api/engine`, { credentials: 'same-origin' });
    if (!response.ok) throw new Error(`engine: HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    console.warn(error);
  }
}

if (card) {
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, 10_000);
}
