import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { isAlive } from '../../src/db/embedded-postgres.js'
import { tempDir } from '../helper.js'
import { startServerProcess } from '../support/server-process.js'

// No DATABASE_URL: the service runs its own PostgreSQL in DATA_DIR. This path runs in CI too: it is
// what a new user gets from `npm start` on a fresh clone.

function postmasterPid (dataDir: string): number | undefined {
  const file = join(dataDir, 'postgres', 'postmaster.pid')
  return existsSync(file) ? Number(readFileSync(file, 'utf8').split('\n')[0]) : undefined
}

t.test('start, write, stop, start again: the data is still there and the server is stopped with the app', async (t) => {
  const dataDir = await tempDir(t)
  const env = { DATA_DIR: dataDir, LOG_LEVEL: 'silent' }

  const first = await buildApp({ env, logger: false })
  await first.ready()
  t.equal(first.databaseKind, 'embedded')
  t.equal(first.migrations.version, first.migrations.expected, 'migrated to the version this build ships')
  const { rows: [created] } = await first.pg.query("INSERT INTO sessions (tenant, metadata) VALUES ('t1', '{\"note\":\"kept ✓\"}') RETURNING id")
  const pid = postmasterPid(dataDir)
  t.ok(pid && isAlive(pid), 'an embedded postgres is running')
  await first.close()
  t.notOk(pid && isAlive(pid), 'stopped when the app closed')

  const second = await buildApp({ env, logger: false })
  t.teardown(() => second.close())
  await second.ready()
  const { rows } = await second.pg.query('SELECT tenant, metadata FROM sessions WHERE id = $1', [created.id])
  t.same(rows, [{ tenant: 't1', metadata: { note: 'kept ✓' } }])
  const { rows: versions } = await second.pg.query('SELECT count(*)::int AS n FROM schema_migrations WHERE version > 0')
  t.equal(versions[0].n, second.migrations.expected, 'each migration applied once, not twice')
})

t.test('a server killed hard leaves an orphaned postgres; the next start takes over', async (t) => {
  const dataDir = await tempDir(t)
  const server = await startServerProcess({ DATA_DIR: dataDir, LOG_LEVEL: 'info' })
  const orphan = postmasterPid(dataDir)
  t.ok(orphan && isAlive(orphan))
  server.child.kill('SIGKILL')
  await server.exited
  t.ok(orphan && isAlive(orphan), 'the postgres of the killed server is still running')

  const next = await startServerProcess({ DATA_DIR: dataDir, LOG_LEVEL: 'info' })
  t.teardown(() => next.child.kill('SIGKILL'))
  t.equal((await fetch(`${next.apiUrl}/`)).status, 200)
  t.match(next.output(), /stopping an orphaned embedded PostgreSQL/)
  t.notOk(orphan && isAlive(orphan), 'the orphan was stopped')
  next.child.kill('SIGTERM')
  t.equal(await next.exited, 0)
  const last = postmasterPid(dataDir)
  t.notOk(last && isAlive(last), 'no postgres left running after a clean shutdown')
})
