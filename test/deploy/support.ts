import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import { cp, mkdir, stat } from 'node:fs/promises'
import { basename, delimiter, dirname, join, posix, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import { parse as parseYaml } from 'yaml'
import { REQUIRE_SERVICES } from '../helper.js'

// Shared by the deployment checks (test/deploy/*.test.ts): the repository's files, the external
// tools (docker-compose, promtool) and small parsers for what no library here reads (Dockerfile,
// PromQL references, the Prometheus text format).

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const repoPath = (...parts: string[]) => join(ROOT, ...parts)
export const readRepoFile = (...parts: string[]) => readFileSync(repoPath(...parts), 'utf8')
export const readYaml = <T = unknown>(...parts: string[]): T => parseYaml(readRepoFile(...parts)) as T

const INSTALL_HINT = 'bash scripts/install-deploy-tools.sh installs it'

export function which (tool: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue
    const candidate = join(dir, tool)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not in this directory
    }
  }
  return undefined
}

/**
 * True when `tool` is on PATH. Otherwise the check cannot run: it fails under REQUIRE_SERVICES
 * (CI installs the tools) and is skipped, saying why, on a developer's machine.
 */
export function haveTool (t: Test, tool: string): boolean {
  if (which(tool)) return true
  const why = `${tool} is not installed (${INSTALL_HINT})`
  if (REQUIRE_SERVICES) t.fail(`${why}, and REQUIRE_SERVICES is set`)
  else t.skip(`not run: ${why}`, () => {})
  return false
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a command to completion (killed at timeoutMs), capturing its output. */
export function run (
  command: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd ?? ROOT, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

/**
 * A minimal environment for child tools: nothing from the developer's shell leaks into a check, not
 * even the `node_modules/.bin` directories that npm and npx put on PATH (the repository's tsc, tsx...).
 */
export function cleanEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const path = (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter((dir) => !/[/\\]node_modules[/\\]\.bin$/.test(dir))
  return { PATH: path.join(delimiter), HOME: process.env.HOME ?? '/tmp', LANG: 'C.UTF-8', ...extra }
}

// ---------------------------------------------------------------------------------------------
// A server in a child process

export interface ChildServer {
  child: ChildProcess
  output: () => string
  exited: Promise<number | null>
}

export function startChild (command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }): ChildServer {
  const child = spawn(command, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout?.on('data', (chunk) => (output += chunk))
  child.stderr?.on('data', (chunk) => (output += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, output: () => output, exited }
}

/** Polls url until it answers `status`; throws (with the server's output) at the deadline or on exit. */
export async function waitForStatus (server: ChildServer, url: string, status: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (server.child.exitCode !== null) throw new Error(`server exited with ${server.child.exitCode}:\n${server.output()}`)
    const answered = await fetch(url).then((res) => res.status, () => 0)
    if (answered === status) return
    await sleep(100)
  }
  throw new Error(`${url} did not answer ${status} within ${timeoutMs} ms:\n${server.output()}`)
}

/** SIGTERM, then the exit code (SIGKILL and null if it has not exited within timeoutMs). */
export async function stopChild (server: ChildServer, timeoutMs = 20_000): Promise<number | null> {
  if (server.child.exitCode !== null) return server.child.exitCode
  server.child.kill('SIGTERM')
  const timedOut = sleep(timeoutMs).then(() => 'timeout' as const)
  const result = await Promise.race([server.exited, timedOut])
  if (result === 'timeout') {
    server.child.kill('SIGKILL')
    return null
  }
  return result
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

export interface Instruction {
  keyword: string
  args: string
}

export interface Stage {
  name: string | undefined
  image: string
  instructions: Instruction[]
}

/** Instructions with continuation lines joined and comments dropped; FROM images with ARG defaults resolved. */
export function parseDockerfile (text: string): { globalArgs: Record<string, string>; stages: Stage[] } {
  const logical: string[] = []
  let current = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (current === '' && (line === '' || line.startsWith('#'))) continue
    if (current !== '' && line.startsWith('#')) continue
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' '
      continue
    }
    logical.push((current + line).trim())
    current = ''
  }
  if (current.trim()) logical.push(current.trim())

  const globalArgs: Record<string, string> = {}
  const stages: Stage[] = []
  for (const line of logical) {
    const match = /^(\w+)\s+([\s\S]*)$/.exec(line)
    if (!match) continue
    const keyword = match[1]!.toUpperCase()
    const args = match[2]!.trim()
    if (keyword === 'ARG' && stages.length === 0) {
      const [name, value = ''] = args.split('=', 2)
      globalArgs[name!.trim()] = value.trim()
      continue
    }
    if (keyword === 'FROM') {
      const from = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      if (!from) throw new Error(`unreadable FROM: ${args}`)
      const image = from[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => globalArgs[a ?? b] ?? '')
      stages.push({ name: from[2], image, instructions: [] })
      continue
    }
    if (stages.length === 0) throw new Error(`instruction before FROM: ${line}`)
    stages.at(-1)!.instructions.push({ keyword, args })
  }
  return { globalArgs, stages }
}

/** The JSON array of an exec-form instruction (CMD, ENTRYPOINT), or undefined for the shell form. */
export function execForm (args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined
  const parsed: unknown = JSON.parse(args)
  return Array.isArray(parsed) && parsed.every((item) => typeof item === 'string') ? parsed : undefined
}

/** The arguments of the last `keyword` instruction of a stage. */
export const lastInstruction = (stage: Stage | undefined, keyword: string): string | undefined =>
  stage?.instructions.filter((i) => i.keyword === keyword).at(-1)?.args

/**
 * .dockerignore as Docker applies it (moby's patternmatcher): each pattern is matched against the
 * path relative to the context root, `*` and `?` within one path segment, `**` across any number;
 * a matching directory takes everything under it; the last matching line wins, and `!` brings a path
 * back. (Docker also looks inside an excluded directory for `!` exceptions; no pattern here needs it.)
 */
export function dockerignore (text: string): (path: string) => boolean {
  const rules = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const exception = line.startsWith('!')
      const pattern = posix.normalize((exception ? line.slice(1) : line).trim()).replace(/^\/+|\/+$/g, '')
      const source = pattern
        .split('/')
        .map((part) => (part === '**' ? '.*' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replaceAll('*', '[^/]*').replaceAll('?', '[^/]')))
        .join('/')
      return { exception, pattern: new RegExp(`^${source}(/.*)?$`) }
    })
  return (path) => rules.reduce((excluded, rule) => (rule.pattern.test(path) ? !rule.exception : excluded), false)
}

/** The build context as `docker build .` sends it: the repository directory less what .dockerignore excludes. */
export async function copyBuildContext (dest: string): Promise<void> {
  const excluded = dockerignore(readRepoFile('.dockerignore'))
  await cp(ROOT, dest, { recursive: true, verbatimSymlinks: true, filter: (source) => source === ROOT || !excluded(relative(ROOT, source).split('\\').join('/')) })
}

export interface BuiltStage {
  /** The directory standing for the stage's WORKDIR. */
  dir: string
  workdir: string
  env: Record<string, string>
}

/**
 * A Dockerfile stage built without an engine, its WORKDIR a directory of its own: COPY from the
 * context or from an earlier stage (awaited, so that independent stages build at the same time, as
 * BuildKit builds them), ENV collected, and every RUN handed to `run` (which decides how a command
 * can run on this machine). One WORKDIR per stage; paths outside it are refused.
 */
export async function buildStage (
  stage: Stage,
  options: { dir: string; context: string; stages: Map<string, Promise<BuiltStage>>; run: (command: string, cwd: string) => Promise<void> }
): Promise<BuiltStage> {
  const built: BuiltStage = { dir: options.dir, workdir: '/', env: {} }
  const inside = (workdir: string, path: string) => {
    const absolute = posix.resolve(workdir, path)
    if (absolute !== workdir && !absolute.startsWith(workdir + '/')) throw new Error(`${path} is outside WORKDIR ${workdir}`)
    return posix.relative(workdir, absolute)
  }
  await mkdir(options.dir, { recursive: true })
  for (const { keyword, args } of stage.instructions) {
    if (keyword === 'WORKDIR') {
      if (built.workdir !== '/') throw new Error(`stage ${stage.name}: one WORKDIR only`)
      built.workdir = posix.resolve('/', args)
    } else if (keyword === 'ENV') {
      for (const assignment of args.split(/\s+/)) {
        const [name, ...value] = assignment.split('=')
        built.env[name!] = value.join('=')
      }
    } else if (keyword === 'COPY') {
      // --chown, --chmod, --link change nothing here; --from names the stage to copy from.
      const words = args.split(/\s+/)
      const from = words.find((word) => word.startsWith('--from='))?.slice('--from='.length)
      const sources = words.filter((word) => !word.startsWith('--'))
      const dest = sources.pop() ?? ''
      const source = from === undefined ? undefined : await options.stages.get(from)
      if (from !== undefined && !source) throw new Error(`COPY --from=${from}: no such stage before ${stage.name}`)
      const target = join(options.dir, inside(built.workdir, dest))
      const intoDirectory = sources.length > 1 || dest.endsWith('/') || posix.normalize(dest) === '.'
      for (const path of sources) {
        const origin = source ? join(source.dir, inside(source.workdir, path)) : join(options.context, path)
        // A directory's contents go to the destination; a file goes into it when it is a directory.
        const file = !(await stat(origin)).isDirectory()
        await cp(origin, file && intoDirectory ? join(target, basename(origin)) : target, { recursive: true, verbatimSymlinks: true })
      }
    } else if (keyword === 'RUN') {
      await options.run(args, options.dir)
    }
  }
  return built
}

// ---------------------------------------------------------------------------------------------
// PromQL: which metrics and labels an expression uses

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'atan2', 'inf', 'nan'])
const GROUPING = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right'])
const AGGREGATIONS = new Set(['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile', 'limitk', 'limit_ratio'])

interface Token {
  kind: 'ident' | 'string' | 'number' | 'var' | 'punct'
  text: string
}

function tokenize (expr: string): Token[] {
  const tokens: Token[] = []
  let i = 0
  while (i < expr.length) {
    const ch = expr[i]!
    if (/\s/.test(ch)) {
      i++
    } else if (ch === '"' || ch === "'" || ch === '`') {
      let j = i + 1
      while (j < expr.length && expr[j] !== ch) j += expr[j] === '\\' && ch !== '`' ? 2 : 1
      tokens.push({ kind: 'string', text: expr.slice(i + 1, j) })
      i = j + 1
    } else if (ch === '$') {
      const match = /^\$(\{[^}]*\}|\w+)/.exec(expr.slice(i))
      const text = match ? match[0] : '$'
      tokens.push({ kind: 'var', text })
      i += text.length
    } else if (/[0-9.]/.test(ch)) {
      const match = /^(0x[0-9a-f]+|[0-9.]+(e[+-]?[0-9]+)?[a-z]*)/i.exec(expr.slice(i))!
      tokens.push({ kind: 'number', text: match[0] })
      i += match[0].length
    } else if (/[a-zA-Z_:]/.test(ch)) {
      const match = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(expr.slice(i))!
      tokens.push({ kind: 'ident', text: match[0] })
      i += match[0].length
    } else {
      tokens.push({ kind: 'punct', text: ch })
      i++
    }
  }
  return tokens
}

export interface PromqlReferences {
  /** Metric names used as selectors. */
  metrics: Set<string>
  /** The matchers of each selector: label name, operator (=, !=, =~, !~) and value, per metric. */
  matcherLabels: Array<{ metric: string; label: string; op: string; value: string }>
  /** Label names of by/without/on/ignoring/group_left/group_right clauses. */
  groupingLabels: Set<string>
}

/** The metric and label names a PromQL expression refers to (Grafana variables allowed). */
export function promqlReferences (expr: string): PromqlReferences {
  const tokens = tokenize(expr)
  const refs: PromqlReferences = { metrics: new Set(), matcherLabels: [], groupingLabels: new Set() }
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!
    if (token.kind === 'punct' && token.text === '[') {
      while (i < tokens.length && tokens[i]!.text !== ']') i++
      continue
    }
    if (token.kind === 'punct' && token.text === '{') throw new Error(`selector without a metric name in: ${expr}`)
    if (token.kind !== 'ident') continue
    const next = tokens[i + 1]
    if (GROUPING.has(token.text)) {
      if (next?.text === '(') {
        i += 2
        while (i < tokens.length && tokens[i]!.text !== ')') {
          if (tokens[i]!.kind === 'ident') refs.groupingLabels.add(tokens[i]!.text)
          i++
        }
      }
      continue
    }
    if (KEYWORDS.has(token.text.toLowerCase())) continue
    if (next?.text === '(') continue // a function or an aggregation
    if (AGGREGATIONS.has(token.text) && (next?.text === 'by' || next?.text === 'without')) continue // `sum by (x) (...)`
    refs.metrics.add(token.text)
    if (next?.text === '{') {
      i += 2
      while (i < tokens.length && tokens[i]!.text !== '}') {
        const label = tokens[i]!
        if (label.kind === 'ident') {
          // the operator, then the value
          let op = ''
          i++
          while (i < tokens.length && tokens[i]!.kind === 'punct' && tokens[i]!.text !== '}') op += tokens[i++]!.text
          const value = tokens[i]?.kind === 'string' ? tokens[i]!.text : ''
          refs.matcherLabels.push({ metric: token.text, label: label.text, op, value })
        }
        if (tokens[i]?.text !== '}') i++
      }
    }
  }
  return refs
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text exposition format

/** Sample name → the label names seen on its samples. */
export function parseExposition (text: string): Map<string, Set<string>> {
  return new Map([...parseExpositionValues(text)].map(([name, labels]) => [name, new Set(labels.keys())]))
}

/** Sample name → label name → the values seen on its samples (escapes resolved). */
export function parseExpositionValues (text: string): Map<string, Map<string, Set<string>>> {
  const samples = new Map<string, Map<string, Set<string>>>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s/.exec(line)
    if (!match) throw new Error(`unreadable sample line: ${line}`)
    const labels = samples.get(match[1]!) ?? new Map<string, Set<string>>()
    for (const label of (match[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      const value = label[2]!.replace(/\\(.)/g, (_, ch: string) => (ch === 'n' ? '\n' : ch))
      const values = labels.get(label[1]!) ?? new Set<string>()
      values.add(value)
      labels.set(label[1]!, values)
    }
    samples.set(match[1]!, labels)
  }
  return samples
}

/** The value of the first sample of `name` that carries every label given (exactly), or undefined. */
export function sampleValue (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([label, value]) => `${label}="${value}"`)
  const line = text
    .split('\n')
    .find((l) => (l.startsWith(name + '{') || l.startsWith(name + ' ')) && wanted.every((w) => l.includes(w)))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

// ---------------------------------------------------------------------------------------------
// The monitoring files

export interface AlertRule {
  alert: string
  expr: string
  for?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
}

export function alertRules (): AlertRule[] {
  const file = readYaml<{ groups: Array<{ name: string; rules: AlertRule[] }> }>('monitoring', 'alerts.yml')
  return file.groups.flatMap((group) => group.rules)
}

export interface Panel {
  id: number
  type: string
  title: string
  collapsed?: boolean
  datasource?: { type: string; uid: string }
  targets?: Array<{ expr?: string; refId?: string; datasource?: { type: string; uid: string } }>
  panels?: Panel[]
  gridPos: { h: number; w: number; x: number; y: number }
  options?: { content?: string; mode?: string }
}

export interface TemplateVariable {
  name: string
  type: string
  definition?: string
  query?: string | { query: string }
  multi?: boolean
  includeAll?: boolean
  datasource?: { type: string; uid: string }
}

export interface Dashboard {
  uid: string
  title: string
  panels: Panel[]
  templating: { list: TemplateVariable[] }
}

export const readDashboard = (): Dashboard => JSON.parse(readRepoFile('monitoring', 'grafana', 'dashboards', 'smalltalk.json')) as Dashboard

/** Every panel, those inside collapsed rows included. */
export function allPanels (dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])])
}

/** The PromQL of a query variable: `label_values(<selector>, <label>)` gives the selector and the label. */
export function variableQuery (variable: TemplateVariable): { expr: string; label?: string } {
  const query = typeof variable.query === 'string' ? variable.query : variable.query?.query ?? variable.definition ?? ''
  const labelValues = /^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$/.exec(query.trim())
  return labelValues ? { expr: labelValues[1]!, label: labelValues[2]! } : { expr: query }
}
