import test from 'ava';
import { instanceResourceNames } from '../../src/broker/ids.js';

const SWARM_NAME = /^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$/;
const UUID = '0b1c6a52-3f0e-4c1e-9d5b-6f0f1e2d3c4b';

test('an instance name the platform gave goes into the container name, with a hash of the id', (t) => {
  const { containerName, volumeName } = instanceResourceNames('default', UUID, 'Orders DB (prod)');
  t.regex(containerName, /^osb-default-orders-db-prod_[0-9a-f]{32}$/);
  t.is(volumeName, `${containerName}-data`);
  // Without a name, or with one that leaves nothing usable, the id's own form as before.
  t.is(instanceResourceNames('default', UUID).containerName, `osb-default-${UUID}`);
  t.is(instanceResourceNames('default', UUID, '訂單').containerName, `osb-default-${UUID}`);
  t.regex(instanceResourceNames('default', UUID, 'Café Müller').containerName, /^osb-default-cafe-muller_[0-9a-f]{32}$/);
});

test('names stay unique, valid for Docker and Swarm, and within 63 characters', (t) => {
  const names = new Set<string>();
  const ids = [UUID, 'shop_0123456789abcdef0123456789abcdef', 'a~b/c', `x${'y'.repeat(120)}`, 'shop'];
  for (const id of ids) {
    for (const name of [undefined, 'shop', 'Shop', 'a'.repeat(200), '-shop-', 'my shop']) {
      const { containerName } = instanceResourceNames('t1a2b3c4d', id, name);
      t.true(containerName.length <= 63 || name === undefined, containerName);
      t.regex(containerName, /^[A-Za-z0-9][A-Za-z0-9_.-]*$/);
      if (name !== undefined) t.regex(containerName, SWARM_NAME, containerName);
      names.add(`${id}\u0000${containerName}`);
    }
  }
  // Two instances (ids) never share a container name, whatever names they were given.
  const byName = new Map<string, string>();
  for (const entry of names) {
    const [id, containerName] = entry.split('\u0000') as [string, string];
    const other = byName.get(containerName);
    t.true(other === undefined || other === id, `${containerName}: ${other} and ${id}`);
    byName.set(containerName, id);
  }
  // The same name for two ids gives two names.
  t.not(instanceResourceNames('b', 'id-1', 'shop').containerName, instanceResourceNames('b', 'id-2', 'shop').containerName);
  // A broker id too long to leave room for a name: the id's form.
  t.is(instanceResourceNames('b'.repeat(30), 'id-1', 'shop').containerName, `osb-${'b'.repeat(30)}-id-1`);
});
