import { Writable } from 'node:stream'
import t from 'tap'
import pino from 'pino'
import { loggerOptions } from '../src/logger.js'

function capture(level?: string) {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk, _encoding, done) {
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
