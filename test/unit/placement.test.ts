import test from 'ava';
import { chooseNode, type NodeLoad, type PlacementNode } from '../../src/broker/placement.js';

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

const node = (id: string, extra: Partial<PlacementNode> = {}): PlacementNode => ({
  id,
  hostname: `host-${id}`,
  availability: 'active',
  state: 'ready',
  memoryBytes: 4 * GIB,
  labels: {},
  advertisedHost: `10.0.0.${id.length}`,
  ...extra,
});

const chosen = (result: ReturnType<typeof chooseNode>) => ('node' in result ? result.node.id : result.error);

test('new instances spread over equal nodes', (t) => {
  const nodes = [node('a'), node('b'), node('c')];
  const load = new Map<string, NodeLoad>();
  const placed: string[] = [];
  for (let index = 0; index < 6; index++) {
    const id = chosen(chooseNode(nodes, load, 256 * MIB));
    placed.push(id);
    const entry = load.get(id) ?? { reservedBytes: 0, instances: 0 };
    load.set(id, { reservedBytes: entry.reservedBytes + 256 * MIB, instances: entry.instances + 1 });
  }
  t.deepEqual(
    ['a', 'b', 'c'].map((id) => placed.filter((candidate) => candidate === id).length),
    [2, 2, 2],
  );
});

test('drained, paused, down and engine-less nodes get nothing', (t) => {
  const nodes = [
    node('drained', { availability: 'drain' }),
    node('paused', { availability: 'pause' }),
    node('down', { state: 'down' }),
    node('blind', { unusable: 'no io.osb-broker.engine label' }),
    node('ok'),
  ];
  t.is(chosen(chooseNode(nodes, new Map(), 256 * MIB)), 'ok');
});

test('memory reserved by instances and the per-node cap are honoured', (t) => {
  const nodes = [node('small', { memoryBytes: 1 * GIB }), node('capped', { labels: { 'io.osb-broker.max-instances': '2' } })];
  const load = new Map<string, NodeLoad>([
    ['small', { reservedBytes: 900 * MIB, instances: 3 }],
    ['capped', { reservedBytes: 512 * MIB, instances: 2 }],
  ]);
  const result = chooseNode(nodes, load, 256 * MIB);
  t.true('error' in result);
  t.regex(chosen(result), /no Swarm node has room/);
  t.regex(chosen(result), /host-small: 124 MiB of memory left, 256 MiB needed/);
  t.regex(chosen(result), /host-capped: holds 2 instances, its io\.osb-broker\.max-instances is 2/);
  // Room again on the capped node once one instance is gone.
  load.set('capped', { reservedBytes: 256 * MIB, instances: 1 });
  t.is(chosen(chooseNode(nodes, load, 256 * MIB)), 'capped');
});

test('the node with the most room left (relative to its size) is chosen', (t) => {
  const nodes = [node('big', { memoryBytes: 16 * GIB }), node('busy', { memoryBytes: 16 * GIB })];
  const load = new Map<string, NodeLoad>([['busy', { reservedBytes: 8 * GIB, instances: 4 }]]);
  t.is(chosen(chooseNode(nodes, load, 256 * MIB)), 'big');
});

test('an empty Swarm is named as such', (t) => {
  t.regex(chosen(chooseNode([], new Map(), MIB)), /the Swarm has no nodes/);
});
