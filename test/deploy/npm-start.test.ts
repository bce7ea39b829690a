import { cp, mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import t, { type Test } from 'tap'
import { cleanEnv, readRepoFile, repoPath, run } from './support.js'

// `npm start` as a new user runs it after `npm ci` (whose `prepare` builds): in a copy of the
// package's scripts and configuration, with a compiled entry point that only says it started, so
// that what npm runs before it shows.

const ENTRY = 'dist/src/server.js'
// One source file in each directory the build compiles; the first one is made newer than the build.
const SOURCES = (JSON.parse(readRepoFile('tsconfig.build.json')) as { include: string[] }).include.map((dir) => `${dir}/example.ts`)

const LONG_AGO = 1_600_000_000

/** The copy, every file written LONG_AGO except the first source (at `source`) and the build (at `build`, if any). */
async function project (t: Test, files: { source: number; build?: number }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'smalltalk-npm-start-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const file of ['package.json', 'scripts/check-build.mjs', 'tsconfig.json', 'tsconfig.build.json']) {
    await mkdir(dirname(join(dir, file)), { recursive: true })
    await cp(repoPath(file), join(dir, file))
  }
  const write = async (path: string, text: string, seconds: number) => {
    await mkdir(dirname(join(dir, path)), { recursive: true })
    await writeFile(join(dir, path), text)
    await utimes(join(dir, path), seconds, seconds)
  }
  for (const file of ['tsconfig.json', 'tsconfig.build.json']) await utimes(join(dir, file), LONG_AGO, LONG_AGO)
  for (const [index, source] of SOURCES.entries()) await write(source, 'export const example = 1\n', index === 0 ? files.source : LONG_AGO)
  if (files.build !== undefined) await write(ENTRY, "console.log('server started', process.execArgv.join(' '))\n", files.build)
  return dir
}

const npmStart = (cwd: string) => run('npm', ['start', '--silent'], { cwd, env: cleanEnv(), timeoutMs: 60_000 })

t.test('npm start runs the compiled server, without compiling first', async (t) => {
  const dir = await project(t, { source: 1_700_000_000, build: 1_700_000_100 })
  const result = await npmStart(dir)
  t.equal(result.code, 0, 'no build step (there is no TypeScript compiler here to run)', { output: result.stdout + result.stderr })
  t.match(result.stdout, /^server started --import=\.\/scripts\/check-build\.mjs --max-semi-space-size=4\n$/, 'one node runs the build check, then dist/src/server.js, with its flags')
})

t.test('npm start refuses a missing build, or one older than the sources, and says what to run', async (t) => {
  const missing = await npmStart(await project(t, { source: 1_700_000_000 }))
  t.equal(missing.code, 1)
  t.match(missing.stderr, `npm start: ${ENTRY} does not exist: run npm run build`)
  t.notMatch(missing.stdout, /server started/)

  const stale = await npmStart(await project(t, { source: 1_700_000_100, build: 1_700_000_000 }))
  t.equal(stale.code, 1)
  t.match(stale.stderr, `npm start: ${SOURCES[0]} changed after the last build: run npm run build`)
  t.notMatch(stale.stdout, /server started/)
})
