import t from 'tap'
import { execForm, parseDockerfile, readRepoFile, type Stage } from './support.js'

// The Dockerfile read as Docker reads it (no engine here to build it): stages, user, ports, probe,
// init process and command. test/deploy/runtime-image.test.ts builds and runs what the runtime
// stage holds.

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'))
const pkg = JSON.parse(readRepoFile('package.json')) as { scripts: Record<string, string> }

const stage = (name: string): Stage => {
  const found = dockerfile.stages.find((s) => s.name === name)
  if (!found) throw new Error(`no stage named ${name}`)
  return found
}
const runs = (s: Stage) => s.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args)
const last = (s: Stage, keyword: string) => s.instructions.filter((i) => i.keyword === keyword).at(-1)?.args

t.test('multi-stage on a current LTS Node on Alpine', async (t) => {
  t.ok(dockerfile.stages.length >= 2, 'more than one stage')
  for (const s of dockerfile.stages) {
    const match = /^node:(\d+)-alpine/.exec(s.image)
    t.ok(match, `stage ${s.name} is built FROM node:<major>-alpine (got ${s.image})`)
    const major = Number(match?.[1])
    t.ok(major >= 22 && major % 2 === 0, `stage ${s.name}: Node ${major} is an even (LTS) major, 22 or later`)
  }
  t.equal(dockerfile.stages.at(-1)?.name, 'runtime', 'the last stage (the default target) is the runtime')
})

t.test('the builder installs everything, compiles and bundles', async (t) => {
  const builder = runs(stage('builder')).join('\n')
  t.match(builder, /\bnpm ci\b/, 'npm ci (from the lockfile)')
  t.notMatch(builder, /--omit=dev/, 'with the dev dependencies (TypeScript, esbuild)')
  t.match(builder, /\bnpm run build\b[\s\S]*\bnpm run bundle\b/, 'npm run build, then npm run bundle')
  t.ok(pkg.scripts.build, 'package.json has a build script')
  t.match(pkg.scripts.bundle, /scripts\/bundle\.ts/, 'and a bundle script (scripts/bundle.ts)')
})

t.test('the runtime has the bundle and no node_modules', async (t) => {
  t.same(dockerfile.stages.map((s) => s.name), ['builder', 'runtime'], 'no stage installs production dependencies: the bundle holds them')
  const copies = stage('runtime').instructions.filter((i) => i.keyword === 'COPY').map((i) => i.args)
  t.notOk(copies.some((c) => /node_modules/.test(c)), 'no node_modules copied')
  for (const path of ['dist/bundle', 'db', 'agents', 'public']) {
    t.ok(copies.some((c) => new RegExp(`--from=builder\\s+/app/${path}\\s`).test(c)), `${path}/ is copied from the builder`)
  }
  t.ok(copies.some((c) => /^package\.json\b/.test(c)), 'package.json is copied (the service reads its version and finds its root by it)')
  t.notOk(copies.some((c) => /package-lock\.json/.test(c)), 'no lockfile: nothing installs in the runtime')
  t.match(runs(stage('builder')).join('\n'), /mkdir -p agents/, 'the builder makes agents/ when the repository has none, so the COPY cannot fail')
})

t.test('non-root user 1001:1001', async (t) => {
  const runtime = stage('runtime')
  t.equal(last(runtime, 'USER'), '1001:1001', 'USER 1001:1001 (numeric, so runAsNonRoot can verify it)')
  const setup = runs(runtime).join('\n')
  t.match(setup, /addgroup\b[^&]*-g 1001\b/, 'group 1001 exists')
  t.match(setup, /adduser\b[^&]*-u 1001\b/, 'user 1001 exists')
})

t.test('an init process, exec-form CMD running the bundled server', async (t) => {
  const runtime = stage('runtime')
  t.match(runs(runtime).join('\n'), /apk add --no-cache tini\b/, 'tini from apk')
  t.same(execForm(last(runtime, 'ENTRYPOINT') ?? ''), ['/sbin/tini', '--'], 'ENTRYPOINT is tini, exec form')
  const cmd = execForm(last(runtime, 'CMD') ?? '')
  t.equal(cmd?.[0], 'node', 'CMD runs node, exec form')
  t.equal(cmd?.at(-1), 'dist/bundle/server.js', "CMD runs the bundle's server (scripts/bundle.ts, entry point server)")
  t.ok(cmd?.slice(1, -1).every((arg) => arg.startsWith('--')), 'anything between is a node flag')
  t.notMatch(last(runtime, 'CMD') ?? '', /npm/, 'not npm start (npm would stand between tini and node, and its build check reads the sources)')
})

t.test('ports and the health check', async (t) => {
  const runtime = stage('runtime')
  const exposed = runtime.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/))
  t.same(exposed.sort(), ['3000', '3001'], 'EXPOSE 3000 (api) and 3001 (ops)')
  const healthcheck = last(runtime, 'HEALTHCHECK') ?? ''
  t.match(healthcheck, /\bCMD\b.*\bwget\b/, 'HEALTHCHECK runs wget (busybox, in the image)')
  t.match(healthcheck, /http:\/\/127\.0\.0\.1:\$\{HEALTH_PORT:-3001\}\/healthz/, 'against /healthz on the ops port (3001 unless HEALTH_PORT says otherwise)')
  for (const option of ['--interval', '--timeout', '--start-period', '--retries']) t.match(healthcheck, option, `HEALTHCHECK sets ${option}`)
  const env = runtime.instructions.filter((i) => i.keyword === 'ENV').map((i) => i.args).join(' ')
  t.match(env, /\bNODE_ENV=production\b/, 'NODE_ENV=production')
  t.match(env, /\bHEALTH_PORT=3001\b/, 'HEALTH_PORT=3001')
  t.match(env, /\bPORT=3000\b/, 'PORT=3000')
})

t.test('.dockerignore keeps the context small and free of secrets', async (t) => {
  const patterns = new Set(
    readRepoFile('.dockerignore')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'))
  )
  for (const pattern of ['node_modules', '.git', 'data', 'coverage', 'dist', '.env', '.env.*', 'test', '.tap']) {
    t.ok(patterns.has(pattern), `${pattern} is excluded`)
  }
  for (const needed of ['src', 'plugins', 'routes', 'db', 'agents', 'scripts', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json']) {
    t.notOk(patterns.has(needed) || patterns.has(needed + '/') || patterns.has('*'), `${needed} stays in the context`)
  }
})
