// `npm start` runs the compiled server; the build happens at install (the `prepare` script) and with
// `npm run build`, not at every start. Loaded by `npm start` with `node --import` (in the server's own process, so
// no second node starts first): a missing build, or one older than what it compiles (a `git pull` since), stops
// the start with what to run instead of running stale code.
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

const ENTRY = 'dist/src/server.js'
const CONFIGS = ['tsconfig.json', 'tsconfig.build.json']

function fail (message) {
  console.error(`npm start: ${message}: run npm run build (npm ci and npm install build too)`)
  process.exit(1)
}

const modified = (path) => statSync(path).mtimeMs

let built
try {
  built = modified(ENTRY)
} catch {
  fail(`${ENTRY} does not exist`)
}
// The directories the build compiles, from its own configuration.
const { include } = JSON.parse(readFileSync('tsconfig.build.json', 'utf8'))
const sources = include.flatMap((dir) => readdirSync(dir, { recursive: true }).filter((file) => file.endsWith('.ts')).map((file) => join(dir, file)))
const newer = [...CONFIGS, ...sources].find((file) => modified(file) > built)
if (newer) fail(`${newer} changed after the last build`)
