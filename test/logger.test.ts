import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { stripVTControlCharacters } from 'node:util'
import t from 'tap'
import pino from 'pino'
import { logDestination, loggerOptions } from '../src/logger.js'

function capture (level?: string) {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)))
      done()
    }
  })
  const options = loggerOptions(level)
  delete options.transport // the pretty transport applies only on a terminal
  return { log: pino(options, stream), lines }
}

t.test('secrets are redacted from log lines', async (t) => {
  const { log, lines } = capture('info')
  log.info({
    req: { headers: { authorization: 'Bearer sk-live-123', cookie: 'sid=abc', 'x-api-key': 'k-1', accept: 'application/json' } },
    provider: { apiKey: 'sk-ant-xyz' },
    apiKey: 'sk-top-level',
    config: { DATABASE_URL: 'postgres://u:hunter2@db/x', PORT: 3000 }
  }, 'hello')
  const text = JSON.stringify(lines)
  for (const secret of ['sk-live-123', 'sid=abc', 'k-1', 'sk-ant-xyz', 'sk-top-level', 'hunter2']) t.notMatch(text, secret, `${secret} is not logged`)
  t.match(lines[0], { req: { headers: { authorization: '[redacted]', accept: 'application/json' } }, config: { PORT: 3000 } })
})

t.test('an invalid LOG_LEVEL still gives a working logger (the config plugin reports it)', async (t) => {
  t.equal(loggerOptions('loud').level, 'info')
  t.equal(loggerOptions('debug').level, 'debug')
  t.equal(loggerOptions(undefined).level, 'info')
})

t.test('the log destination writes whole JSON lines, multi-byte text intact, async or sync', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'smalltalk-log-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  for (const sync of [false, true]) {
    const file = join(dir, `log-${sync}.ndjson`)
    const { transport: _pretty, ...options } = loggerOptions('info')
    const destination = logDestination(file, { sync })
    const log = pino(options, destination)
    const texts = ['plain', 'héllo wörld', 'emoji 🎉 and ✓', 'x'.repeat(20_000)]
    for (let i = 0; i < 2000; i++) log.child({ reqId: `req-${i}` }).info({ i, text: texts[i % texts.length], apiKey: 'sk-x' }, 'line')
    await new Promise<void>((resolve, reject) => log.flush((err) => (err ? reject(err) : resolve())))
    destination.end()
    await once(destination, 'close')
    const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>)
    t.equal(lines.length, 2000, `sync ${sync}: every line written`)
    t.same(lines.map((l) => l.i), Array.from({ length: 2000 }, (_, i) => i), 'in order')
    t.ok(lines.every((l, i) => l.text === texts[i % texts.length] && l.reqId === `req-${i}` && l.apiKey === '[redacted]'), 'text intact, bindings and redaction applied')
  }
})

t.test('lines logged just before the process exits reach stdout (a pipe, as in a container)', async (t) => {
  const script = [
    "import { createLogger } from './src/logger.ts'",
    "const log = createLogger('info')",
    "for (let i = 0; i < 5000; i++) log.info({ i }, 'burst')",
    'process.exit(3)'
  ].join('\n')
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let stdout = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  const [code] = (await once(child, 'close')) as [number]
  t.equal(code, 3)
  const lines = stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { i: number })
  t.equal(lines.length, 5000, 'none lost at exit')
  t.equal(lines.at(-1)?.i, 4999)
})

/** Runs `script` (a module importing src/logger.ts) with stdout on a pipe, or on a terminal. */
function logFromChild (script: string, terminal: boolean): Promise<{ code: number; stdout: string }> {
  const cwd = fileURLToPath(new URL('..', import.meta.url))
  const node = [process.execPath, '--import', 'tsx', '--input-type=module', '-e', script]
  // util-linux `script` gives the child a pseudo-terminal, as a person's shell does.
  const quoted = node.map((arg) => `'${arg.replaceAll("'", "'\\''")}'`).join(' ')
  const child = terminal
    ? spawn('script', ['-qec', quoted, '/dev/null'], { cwd, stdio: ['ignore', 'pipe', 'inherit'] })
    : spawn(node[0]!, node.slice(1), { cwd, stdio: ['ignore', 'pipe', 'inherit'] })
  let stdout = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  return once(child, 'close').then(([code]) => ({ code: code as number, stdout }))
}

t.test('pretty lines on a terminal, JSON lines on a pipe, redacted both ways', async (t) => {
  const script = "import { createLogger } from './src/logger.ts'\ncreateLogger('info').info({ apiKey: 'sk-secret' }, 'hello')"
  const piped = await logFromChild(script, false)
  t.equal(piped.code, 0)
  t.match(JSON.parse(piped.stdout), { level: 30, msg: 'hello', apiKey: '[redacted]' }, 'one JSON line')

  const tty = await logFromChild(script, true)
  t.equal(tty.code, 0)
  const text = stripVTControlCharacters(tty.stdout)
  t.match(text, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(\d+\): hello\r?\n\s+apiKey: "\[redacted\]"/, 'pino-pretty: time, level, message, fields')
  t.notMatch(text, /"level"|sk-secret/, 'not JSON, no secret')
})
