import test from 'ava';
import { Ajv } from 'ajv';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/config.js';
import { CatalogError, loadCatalog } from '../../src/catalog/load.js';

const realCatalog = path.join(PACKAGE_ROOT, 'catalog');
const schemaFile = path.join(realCatalog, 'service.schema.json');

/** A copy of the real catalog with one service.json changed by `edit`. */
function catalogWith(edit: (service: any) => void): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'catalog-'));
  cpSync(realCatalog, dir, { recursive: true });
  const file = path.join(dir, 'postgresql', 'service.json');
  const service = JSON.parse(readFileSync(file, 'utf8'));
  edit(service);
  writeFileSync(file, JSON.stringify(service));
  return dir;
}

test('the shipped catalog loads: fixed GUIDs, lowercase names, plans with limits and schemas', (t) => {
  const definitions = loadCatalog(realCatalog, 'osb-broker/');
  t.deepEqual(definitions.map((definition) => definition.offering.name).sort(), [
    'mariadb',
    'memcached',
    'mqtt',
    'postgresql',
    'rabbitmq',
    'redis',
    'syslog-drain',
  ]);
  for (const definition of definitions) {
    const offering = definition.offering;
    t.regex(offering.id, /^[0-9a-f-]{36}$/);
    t.truthy(offering.description);
    t.true((offering.tags ?? []).length > 0, offering.name);
    t.true(offering.plans.length >= 2, `${offering.name} has two plans or more`);
    for (const plan of offering.plans) {
      t.regex(plan.id, /^[0-9a-f-]{36}$/);
      t.deepEqual(plan.maintenance_info, definition.maintenanceInfo);
      t.is((plan as unknown as Record<string, unknown>).limits, undefined, 'limits stay inside the broker');
      t.is(plan.schemas?.service_instance?.create?.parameters.$schema, 'http://json-schema.org/draft-07/schema#');
      t.truthy(definition.limits.get(plan.id));
    }
    t.is(definition.imageRepository, `osb-broker/${offering.name}`);
    t.true(definition.scripts.has('ready'));
  }
  const drain = definitions.find((definition) => definition.offering.name === 'syslog-drain')!;
  t.deepEqual(drain.offering.requires, ['syslog_drain']);
  t.is(drain.syslogDrainUrl, 'syslog://{host}:{port}');
});

test('every shipped offering says whether it has backups; those that have them have both scripts', (t) => {
  const definitions = loadCatalog(realCatalog, 'osb-broker/');
  const withBackups = definitions.filter((definition) => definition.backups.supported).map((definition) => definition.offering.name);
  t.deepEqual(withBackups.sort(), ['mariadb', 'mqtt', 'postgresql', 'rabbitmq', 'redis', 'syslog-drain']);
  for (const definition of definitions) {
    const { backups, scripts } = definition;
    if (backups.supported) {
      t.true(scripts.has('backup') && scripts.has('restore'), definition.offering.name);
      t.truthy(backups.format);
      t.regex(backups.contains, /Not included:/, `${definition.offering.name} says what a backup leaves out`);
    } else {
      t.false(scripts.has('backup') || scripts.has('restore'), definition.offering.name);
      t.truthy(backups.reason);
    }
  }
  const rabbitmq = definitions.find((definition) => definition.offering.name === 'rabbitmq')!;
  t.regex(rabbitmq.offering.metadata?.longDescription as string, /not its messages/, 'the catalog tells users that messages are not backed up');
});

test('a catalog folder with backups but without scripts/restore stops the broker', (t) => {
  const dir = catalogWith(() => {});
  rmSync(path.join(dir, 'postgresql', 'scripts', 'restore'));
  t.throws(() => loadCatalog(dir, 'x/'), {
    instanceOf: CatalogError,
    message: /postgresql: scripts\/restore is missing \(backups\.supported is true: it reads a dump from stdin into an instance\)/,
  });
});

const badCases: Array<[string, (service: any) => void, RegExp]> = [
  [
    'a non-GUID id',
    (s) => {
      s.offering.id = 'pg';
    },
    /service\.json: offering\.id must be a GUID/,
  ],
  [
    'an uppercase name',
    (s) => {
      s.offering.name = 'PostgreSQL';
    },
    /offering\.name must be lowercase/,
  ],
  [
    'no plans',
    (s) => {
      s.offering.plans = [];
    },
    /offering\.plans must list at least one plan/,
  ],
  [
    'a plan without limits',
    (s) => {
      delete s.offering.plans[1].limits;
    },
    /offering\.plans\[1\]\.limits must be an object/,
  ],
  [
    'a bad memory limit',
    (s) => {
      s.offering.plans[0].limits.memory_mb = 'lots';
    },
    /offering\.plans\[0\]\.limits\.memory_mb must be an integer/,
  ],
  [
    'a non-SemVer version',
    (s) => {
      s.maintenance_info.version = '15';
    },
    /maintenance_info\.version must be a SemVer/,
  ],
  [
    'a schema without $schema',
    (s) => {
      delete s.parameters.$schema;
    },
    /parameters\.\$schema must name/,
  ],
  [
    'an invalid schema',
    (s) => {
      s.parameters.properties.database.type = 'text';
    },
    /parameters is not a valid JSON-Schema/,
  ],
  [
    'an external $ref',
    (s) => {
      s.parameters.properties.x = { $ref: 'https://example.com/s.json' };
    },
    /must not use an external \$ref/,
  ],
  [
    'an updatable parameter that does not exist',
    (s) => {
      s.updatable_parameters = ['nope'];
    },
    /updatable_parameters names "nope"/,
  ],
  [
    'a duplicate plan id',
    (s) => {
      s.offering.plans[1].id = s.offering.plans[0].id;
    },
    /is also used in/,
  ],
  [
    'a credentials block that is not an object',
    (s) => {
      s.credentials = 'uri';
    },
    /credentials must be an object/,
  ],
  [
    'a credential that is not a string',
    (s) => {
      s.credentials.port = 5432;
    },
    /credentials.port must be a non-empty string/,
  ],
  [
    'a drain URL without requires syslog_drain',
    (s) => {
      s.syslog_drain_url = 'syslog://{host}:{port}';
    },
    /syslog_drain_url needs offering.requires/,
  ],
  [
    'a relative data path',
    (s) => {
      s.container.data_path = 'data';
    },
    /container\.data_path must be an absolute path/,
  ],
  [
    'a missing bindable flag',
    (s) => {
      delete s.offering.bindable;
    },
    /offering\.bindable must be true or false/,
  ],
  [
    'a parameter name that is no environment variable name',
    (s) => {
      s.parameters.properties['Bad-Name'] = { type: 'string' };
    },
    /service\.json: parameters\.properties\["Bad-Name"\] must be named with lowercase a-z, 0-9 and "_"/,
  ],
  [
    'a memory limit of the wrong type',
    (s) => {
      s.offering.plans[0].limits.memory_mb = { mb: 512 };
    },
    /service\.json: offering\.plans\[0\]\.limits\.memory_mb must be an integer >= 16$/,
  ],
  [
    'a fractional CPU count below the minimum',
    (s) => {
      s.offering.plans[1].limits.cpus = 0.001;
    },
    /offering\.plans\[1\]\.limits\.cpus must be a number >= 0\.01 and <= 64 \(got 0\.001\)/,
  ],
  [
    'an empty tag',
    (s) => {
      s.offering.tags = ['sql', ''];
    },
    /offering\.tags\[1\] must be a non-empty string/,
  ],
  [
    'an extra port with an uppercase name',
    (s) => {
      s.container.extra_ports = { Admin: 8080 };
    },
    /container\.extra_ports\.Admin must be named with lowercase a-z, 0-9 and "_"/,
  ],
  [
    'a missing container port',
    (s) => {
      delete s.container.port;
    },
    /container\.port must be an integer >= 1 and <= 65535 \(it is missing\)/,
  ],
  [
    'backups without "supported"',
    (s) => {
      s.backups = { contains: 'the database' };
    },
    /service\.json: backups\.supported must be true or false \(it is missing\)/,
  ],
  [
    'backups that do not say what a backup holds',
    (s) => {
      delete s.backups.contains;
    },
    /service\.json: backups\.contains is required when backups\.supported is true/,
  ],
  [
    'backup scripts but backups not supported',
    (s) => {
      s.backups = { supported: false, reason: 'none' };
    },
    /service\.json: backups\.supported must be true when the folder has scripts\/backup and scripts\/restore \(got false\)/,
  ],
  [
    'backup scripts but no backups declaration',
    (s) => {
      delete s.backups;
    },
    /service\.json: backups is missing, but the folder has scripts\/backup and scripts\/restore/,
  ],
];

for (const [what, edit, message] of badCases) {
  test(`a catalog with ${what} stops the broker with a message naming the file and field`, (t) => {
    const dir = catalogWith(edit);
    const error = t.throws(() => loadCatalog(dir, 'x/'), { instanceOf: CatalogError });
    t.regex(error.message, message);
    t.true(error.message.includes(path.join(dir, 'postgresql', 'service.json')) || error.message.includes(path.join(dir, 'postgresql')));
  });
}

test('invalid JSON names the file', (t) => {
  const dir = catalogWith(() => {});
  writeFileSync(path.join(dir, 'postgresql', 'service.json'), '{ nope');
  t.throws(() => loadCatalog(dir, 'x/'), { instanceOf: CatalogError, message: /postgresql\/service\.json: not valid JSON/ });
});

/** The schema compiled the way a catalog editor's tooling would: strict, with the broker's message keyword. */
function compileServiceSchema() {
  const ajv = new Ajv({ allErrors: true, allowUnionTypes: true });
  ajv.addKeyword({ keyword: 'errorMessage', schemaType: 'string' });
  const schema = JSON.parse(readFileSync(schemaFile, 'utf8'));
  return { ajv, schema, validate: ajv.compile(schema) };
}

test('service.schema.json is a valid draft-07 schema that compiles in strict mode', (t) => {
  const { ajv, schema } = compileServiceSchema();
  t.is(schema.$schema, 'http://json-schema.org/draft-07/schema#');
  t.true(ajv.validateSchema(schema), ajv.errorsText());
});

for (const folder of readdirSync(realCatalog, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)) {
  test(`the shipped ${folder}/service.json validates against service.schema.json`, (t) => {
    const { validate } = compileServiceSchema();
    const service = JSON.parse(readFileSync(path.join(realCatalog, folder, 'service.json'), 'utf8'));
    t.true(validate(service), JSON.stringify(validate.errors));
  });
}
