import { cp, lstat, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import type { Test } from 'tap'
import { ENTRY_POINTS, bundle } from '../../scripts/bundle.js'
import { execForm, parseDockerfile, readRepoFile, repoPath, run } from './support.js'

// The runtime image's /app without a Docker engine: the builder stage's `npm run build` and
// `npm run bundle`, then exactly the files the runtime stage's COPY instructions take.

export interface RuntimeLayout {
  /** The runtime stage's WORKDIR, as a directory of its own. */
  dir: string
  /** The image's CMD (exec form), e.g. ['node', '--max-semi-space-size=4', 'dist/bundle/server.js']. */
  cmd: string[]
  /** The migration CLI beside the server in the bundle, as `node <it>` (the migration Job's command). */
  migrate: string[]
}

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'))
const runtime = dockerfile.stages.find((stage) => stage.name === 'runtime')

/** The runtime stage's CMD and migration command, read from the Dockerfile. */
export function imageCommands (): { cmd: string[]; migrate: string[] } {
  const cmd = execForm(runtime?.instructions.filter((i) => i.keyword === 'CMD').at(-1)?.args ?? '')
  const server = cmd?.find((arg) => arg.endsWith('/server.js'))
  if (!cmd || !server) throw new Error('the runtime stage has no exec-form CMD running <bundle>/server.js')
  // The bundle names each output after its entry point (scripts/bundle.ts).
  const entry: keyof typeof ENTRY_POINTS = 'migrate'
  return { cmd, migrate: ['node', posix.join(posix.dirname(server), `${entry}.js`)] }
}

export async function buildRuntimeLayout (t: Test): Promise<RuntimeLayout> {
  const work = await mkdtemp(join(tmpdir(), 'smalltalk-image-'))
  t.teardown(() => rm(work, { recursive: true, force: true }))
  const builder = join(work, 'builder')
  const dir = join(work, 'app')

  // builder: npm run build (into the copy, so the repository's dist/ is left alone), npm run bundle
  const build = await run('npm', ['run', 'build', '--', '--outDir', join(builder, 'dist')], { timeoutMs: 240_000 })
  if (build.code !== 0) throw new Error(`npm run build failed (${build.signal ?? `exit code ${build.code}`}):\n${build.stdout}${build.stderr}`)
  await bundle({ compiled: join(builder, 'dist'), outdir: join(builder, 'dist', 'bundle') })

  // runtime: COPY --from=builder /app/<path> <dest> takes the builder's outputs (dist) or the build
  // context (everything else); a plain COPY takes the context.
  for (const copy of runtime?.instructions.filter((i) => i.keyword === 'COPY') ?? []) {
    const args = copy.args.split(/\s+/)
    const fromBuilder = args[0] === '--from=builder'
    const paths = fromBuilder ? args.slice(1) : args
    const dest = paths.pop()!
    for (const source of paths) {
      const relative = fromBuilder ? posix.relative('/app', source) : source
      const from = fromBuilder && relative.startsWith('dist') ? join(builder, relative) : repoPath(relative)
      const to = dest.endsWith('/') ? join(dir, dest, posix.basename(relative)) : join(dir, dest)
      await cp(from, to, { recursive: true })
    }
  }
  return { dir, ...imageCommands() }
}

/** Bytes of every file under dir (what a layer's tar holds, less its headers) and the files' count. */
export async function directorySize (dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0
  let files = 0
  for (const entry of await readdir(dir, { recursive: true })) {
    const info = await lstat(join(dir, entry))
    if (info.isFile()) {
      bytes += info.size
      files++
    }
  }
  return { bytes, files }
}
