// Type-checks every provisioned dashboard against Grafana's published
// dashboard schema (@grafana/schema, the types Grafana 12.2.1 generates from
// its CUE schema), with panel targets typed as the ClickHouse plugin
// v4.20.0 types its SQL queries (`CHSqlQuery` in the plugin's
// src/types/sql.ts). A dashboard becomes an object literal typed
// `SpillwayDashboard`, so a wrong type, a missing required field or an
// unknown field fails `tsc`, as it would fail Grafana's schema.
//
//   node tests/grafana-schema/check.mjs     (after `npm ci` in this folder)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dashboards = join(here, '../../deploy/grafana/dashboards');
const work = mkdtempSync(join(here, '.check-'));

const header = `
import type { Dashboard, DataQuery, DataSourceRef, Panel, RowPanel } from '@grafana/schema';

// The plugin's CHSqlQuery (src/types/sql.ts, v4.20.0).
interface CHSqlQuery extends DataQuery {
  pluginVersion: string;
  editorType: 'sql';
  rawSql: string;
  format?: number;
  queryType?: 'table' | 'logs' | 'timeseries' | 'traces';
  datasource?: DataSourceRef;
  meta?: { timezone?: string };
  expand?: boolean;
}
type ClickHousePanel = Omit<Panel, 'targets'> & { targets?: CHSqlQuery[] };
type SpillwayDashboard = Omit<Dashboard, 'panels'> & { panels?: Array<ClickHousePanel | RowPanel> };
`;

const files = readdirSync(dashboards).filter((f) => f.endsWith('.json'));
if (files.length === 0) {
  throw new Error(`no dashboards in ${dashboards}`);
}
for (const [i, file] of files.entries()) {
  const json = readFileSync(join(dashboards, file), 'utf8');
  JSON.parse(json); // a syntax error is reported before tsc
  writeFileSync(join(work, `dashboard${i}.ts`), `${header}\n// ${file}\nexport const d: SpillwayDashboard = ${json};\n`);
}
writeFileSync(
  join(work, 'tsconfig.json'),
  JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, module: 'esnext', moduleResolution: 'bundler', skipLibCheck: true, typeRoots: [] },
    include: ['*.ts'],
  })
);
let ok = true;
try {
  execFileSync(join(here, 'node_modules/.bin/tsc'), ['-p', work], { stdio: 'inherit', cwd: here });
} catch {
  ok = false;
} finally {
  execFileSync('rm', ['-rf', work]);
}
if (!ok) {
  console.error(`dashboards in ${dashboards} do not match @grafana/schema's Dashboard (above)`);
  process.exit(1);
}
console.log(`${files.length} dashboard(s) match @grafana/schema's Dashboard`);
