import t from 'tap'
import { execForm, lastInstruction, parseDockerfile, readRepoFile } from './support.js'

// What only a Docker engine would show, read from the files instead: the base images, the runtime
// stage's system setup on Alpine (tini, the 1001 user, no npm), the image's metadata (USER,
// ENTRYPOINT, EXPOSE, the default ports, the HEALTHCHECK timings) and what .dockerignore keeps out
// of the context. The rest is run: test/deploy/runtime-image.test.ts builds the stages here and
// starts the image's CMD (production dependencies only, the files it needs, NODE_ENV, the HEALTHCHECK
// command, migrations, signals).

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'))
const runtime = dockerfile.stages.at(-1)
const runs = runtime?.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args).join('\n') ?? ''

t.test('multi-stage on a current LTS Node on Alpine', async (t) => {
  t.ok(dockerfile.stages.length >= 2, 'more than one stage')
  for (const s of dockerfile.stages) {
    const match = /^node:(\d+)-alpine/.exec(s.image)
    t.ok(match, `stage ${s.name} is built FROM node:<major>-alpine (got ${s.image})`)
    const major = Number(match?.[1])
    t.ok(major >= 22 && major % 2 === 0, `stage ${s.name}: Node ${major} is an even (LTS) major, 22 or later`)
  }
  t.equal(runtime?.name, 'runtime', 'the last stage (the default target) is the runtime')
})

t.test('non-root user 1001:1001', async (t) => {
  t.equal(lastInstruction(runtime, 'USER'), '1001:1001', 'USER 1001:1001 (numeric, so runAsNonRoot can verify it)')
  t.match(runs, /addgroup\b[^&]*-g 1001\b/, 'group 1001 exists')
  t.match(runs, /adduser\b[^&]*-u 1001\b/, 'user 1001 exists')
})

t.test('tini as PID 1, node run directly, no package manager', async (t) => {
  t.match(runs, /apk add --no-cache tini\b/, 'tini from apk')
  t.same(execForm(lastInstruction(runtime, 'ENTRYPOINT') ?? ''), ['/sbin/tini', '--'], 'ENTRYPOINT is tini, exec form')
  t.equal(execForm(lastInstruction(runtime, 'CMD') ?? '')?.[0], 'node', 'CMD runs node itself, not a package manager')
  t.match(runs, /rm -rf[^&]*\/usr\/local\/lib\/node_modules\/npm\b/, 'npm is removed from the image')
})

t.test('ports, their defaults and the health check timings', async (t) => {
  const exposed = runtime?.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)) ?? []
  t.same(exposed.sort(), ['3000', '3001'], 'EXPOSE 3000 (api) and 3001 (ops)')
  const env = runtime?.instructions.filter((i) => i.keyword === 'ENV').map((i) => i.args).join(' ') ?? ''
  t.match(env, /\bPORT=3000\b/, 'PORT=3000, the exposed api port')
  t.match(env, /\bHEALTH_PORT=3001\b/, 'HEALTH_PORT=3001, the exposed ops port')
  const healthcheck = lastInstruction(runtime, 'HEALTHCHECK') ?? ''
  for (const option of ['--interval', '--timeout', '--start-period', '--retries']) t.match(healthcheck, option, `HEALTHCHECK sets ${option}`)
})

t.test('.dockerignore keeps secrets and local state out of the context', async (t) => {
  const patterns = new Set(
    readRepoFile('.dockerignore')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'))
  )
  for (const pattern of ['node_modules', '.git', 'data', 'coverage', 'dist', '.env', '.env.*', 'test', '.tap']) {
    t.ok(patterns.has(pattern), `${pattern} is excluded`)
  }
})
