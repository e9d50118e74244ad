// Usage over time: CPU, memory, network, block I/O and disk of the kept hour, drawn with uPlot (served from its npm
// package, loaded by the classic script before this module) and refreshed as the broker takes new samples.
const base = location.pathname.replace(/\/+$/, '');
const $ = (id) => document.getElementById(id);
const uPlot = globalThis.uPlot;

const bytes = (value) => {
  if (value === null || !Number.isFinite(value)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
};
const rate = (value) => (value === null || !Number.isFinite(value) ? '—' : `${bytes(value)}/s`);
const percent = (value) => (value === null || !Number.isFinite(value) ? '—' : `${value.toFixed(1)} %`);
const clock = (iso) => new Date(iso).toLocaleTimeString();
/** Axis ticks: short, so the labels fit beside a chart a fifth of the page wide (1.5M, 20K/s, 50 %). */
const short = (value, suffix = '') => {
  const units = ['', 'K', 'M', 'G', 'T'];
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${Number(value.toFixed(value >= 10 || Number.isInteger(value) ? 0 : 1))}${units[unit]}${suffix}`;
};
const ticksOf = { percent: (value) => `${Number(value.toFixed(1))} %`, bytes: (value) => short(value), rate: (value) => short(value, '/s') };
/** Times on the axis: hours and minutes, with seconds while the charts span less than ten minutes. */
const timeTicks = (_u, ticks) => {
  const seconds = ticks.length > 1 && ticks.at(-1) - ticks[0] < 600;
  // 24-hour times: "04:46:30 AM" is too wide for five charts side by side and for a phone.
  return ticks.map((tick) =>
    new Date(tick * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', ...(seconds ? { second: '2-digit' } : {}) }),
  );
};

/** Each chart: its series (name, colour variable, value format) and how to read them from the history. */
const CHARTS = [
  { id: 'cpu', title: 'CPU', format: percent, ticks: ticksOf.percent, floor: 1, series: [['CPU', '--chart-1', (h) => h.cpuPercent]] },
  {
    id: 'memory', title: 'Memory', format: bytes, ticks: ticksOf.bytes, floor: 1048576,
    series: [['Used', '--chart-1', (h) => h.memoryBytes], ['Limit', '--chart-limit', (h) => h.time.map(() => h.memoryLimitBytes ?? null)]],
  },
  {
    id: 'network', title: 'Network', format: rate, ticks: ticksOf.rate, floor: 1024,
    series: [['Received', '--chart-1', (h) => h.networkRxBytesPerSecond], ['Sent', '--chart-2', (h) => h.networkTxBytesPerSecond]],
  },
  {
    id: 'blockio', title: 'Block I/O', format: rate, ticks: ticksOf.rate, floor: 1024,
    series: [['Read', '--chart-1', (h) => h.blockReadBytesPerSecond], ['Written', '--chart-2', (h) => h.blockWriteBytesPerSecond]],
  },
  {
    id: 'disk', title: 'Disk (data volume)', format: bytes, ticks: ticksOf.bytes, floor: 1048576, time: (h) => h.disk.time,
    series: [['Used', '--chart-1', (h) => h.disk.usedBytes], ['Plan disk_mb', '--chart-limit', (h) => h.disk.time.map(() => h.diskStatus?.limitBytes ?? null)]],
  },
];

const plots = new Map();
let history;

function colour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888888';
}

/** A #rrggbb colour, see-through: the canvas takes no CSS colour-mix(). */
function faint(hex) {
  const value = parseInt(hex.replace('#', '').slice(0, 6), 16);
  return Number.isNaN(value) ? 'transparent' : `rgba(${value >> 16}, ${(value >> 8) & 255}, ${value & 255}, 0.15)`;
}

function options(chart, width) {
  const axis = { stroke: colour('--muted'), font: '11px system-ui, sans-serif', grid: { stroke: colour('--line'), width: 1 }, ticks: { stroke: colour('--line'), width: 1 } };
  return {
    width,
    height: 150,
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
    // From zero, and never so low that an idle instance's noise fills the chart (ticks of a fraction of a byte).
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(chart.floor, (max ?? 0) * 1.1)] } },
    axes: [{ ...axis, size: 30, space: 70, values: timeTicks }, { ...axis, size: 50, values: (_u, ticks) => ticks.map(chart.ticks) }],
    series: [
      { value: (_u, seconds) => (seconds ? new Date(seconds * 1000).toLocaleTimeString() : '—') },
      ...chart.series.map(([label, variable], index) => ({
        label,
        stroke: colour(variable),
        width: 1.5,
        dash: variable === '--chart-limit' ? [4, 4] : undefined,
        fill: index === 0 && variable !== '--chart-limit' ? faint(colour(variable)) : undefined,
        points: { show: false },
        value: (_u, value) => chart.format(value),
      })),
    ],
    hooks: {
      // What the chart drew, readable from the page (and by tests): the series with points and the points themselves.
      draw: [(u) => {
        const drawn = u.data.slice(1).map((values) => values.filter((value) => value !== null && value !== undefined).length);
        u.root.parentElement.dataset.series = String(drawn.filter((count) => count > 0).length);
        u.root.parentElement.dataset.points = String(drawn.reduce((sum, count) => sum + count, 0));
      }],
    },
  };
}

function dataOf(chart) {
  const time = chart.time ? chart.time(history) : history.time;
  return [time, ...chart.series.map(([, , values]) => values(history))];
}

/** Makes the charts anew (first data, a colour scheme change), else hands them the new data. */
function draw(rebuild = false) {
  for (const chart of CHARTS) {
    const holder = $(`chart-${chart.id}`);
    const width = Math.max(120, holder.clientWidth);
    let plot = plots.get(chart.id);
    if (plot && rebuild) {
      plot.destroy();
      plot = undefined;
    }
    if (!plot) plots.set(chart.id, new uPlot(options(chart, width), dataOf(chart), holder));
    else plot.setData(dataOf(chart));
  }
}

function describe() {
  const status = $('charts-status');
  const stale = history.lastSampleAt && Date.now() - Date.parse(history.lastSampleAt) > 3 * history.sampleSeconds * 1000;
  status.className = stale ? 'small bad' : 'muted small';
  status.textContent = !history.lastSampleAt
    ? history.sampleSeconds > 0
      ? 'No samples yet: the broker samples a running instance every few seconds.'
      : 'Sampling is off on this broker (BROKER_USAGE_SAMPLE_SECONDS=0).'
    : stale
      ? `No samples since ${clock(history.lastSampleAt)}: the container is not running or cannot be reached.`
      : `Every ${history.sampleSeconds} s, the last ${Math.round(history.keepSeconds / 60)} min · last sample ${clock(history.lastSampleAt)}`;

  const disk = history.diskStatus;
  const summary = $('disk-summary');
  summary.textContent = disk
    ? `Disk: ${bytes(disk.usedBytes)}${disk.limitBytes ? ` of ${bytes(disk.limitBytes)} (the plan's disk_mb)` : ''}, measured ${clock(disk.measuredAt)}`
    : '';
  const warning = $('disk-warning');
  warning.hidden = !disk?.over;
  warning.textContent = disk?.over
    ? `The data volume holds ${bytes(disk.usedBytes)}, over the plan's ${bytes(disk.limitBytes)}. This is a soft limit: nothing stops the writes ` +
      '(Docker’s local volumes have no quota) until the host’s disk is full. Delete data or move to a larger plan.'
    : '';
}

async function refresh() {
  try {
    const response = await fetch(`${base}/api/usage/history`, { credentials: 'same-origin' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    history = await response.json();
    describe();
    draw();
  } catch (error) {
    // The page keeps its last charts; the line says why they stopped moving.
    $('charts-status').className = 'small bad';
    $('charts-status').textContent = `The history cannot be read just now (${error.message}); the charts show what was there.`;
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, Math.min(15, Math.max(2, history?.sampleSeconds || 10)) * 1000);
}

if (uPlot) {
  loop();
  new ResizeObserver(() => {
    for (const chart of CHARTS) plots.get(chart.id)?.setSize({ width: Math.max(120, $(`chart-${chart.id}`).clientWidth), height: 150 });
  }).observe($('charts'));
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => history && draw(true));
} else {
  $('charts-status').textContent = 'The charting library did not load.';
}
