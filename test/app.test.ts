import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import pino from 'pino'
import ts from 'typescript'
import { buildApp } from '../src/app.js'
import { DomainError } from '../src/domain-errors.js'
import { loggerOptions } from '../src/logger.js'
import { buildService, buildTestApp, eventually, testEnv } from './helper.js'

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

t.test('GET / identifies the service', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { NODE_ENV: 'staging' }))
  const res = await app.inject({ method: 'GET', url: '/' })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['environment', 'name', 'status', 'timestamp', 'version'])
  t.equal(body.name, 'SmallTalk Server')
  t.equal(body.version, pkg.version, 'version comes from package.json')
  t.equal(body.status, 'running')
  t.equal(body.environment, 'staging')
  t.ok(Math.abs(Date.parse(body.timestamp) - Date.now()) < 60_000, 'timestamp is now')
})

t.test('the two ports serve disjoint routes', async (t) => {
  const { app, ops } = await buildService(t, await testEnv(t))
  for (const url of ['/healthz', '/ready', '/health', '/metrics']) {
    const onApi = await app.inject({ method: 'GET', url })
    t.equal(onApi.statusCode, 404, `api port: ${url} is not served`)
    t.equal(onApi.json().error, 'Not Found')
    const onOps = await ops.inject({ method: 'GET', url })
    t.not(onOps.statusCode, 404, `ops port: ${url} is served`)
  }
  for (const url of ['/', '/docs', '/docs/json']) {
    t.equal((await ops.inject({ method: 'GET', url })).statusCode, 404, `ops port: ${url} is not served`)
    t.not((await app.inject({ method: 'GET', url })).statusCode, 404, `api port: ${url} is served`)
  }
})

/** The project's modules that `entry` imports, directly or through others (type imports included). */
function moduleGraph (entry: string): Set<string> {
  const seen = new Set<string>()
  const visit = (file: string) => {
    if (seen.has(file)) return
    seen.add(file)
    for (const { fileName } of ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles) {
      if (fileName.startsWith('.')) visit(resolve(dirname(file), fileName.replace(/\.js$/, '.ts')))
    }
  }
  visit(entry)
  return seen
}

t.test('the ops instance does not depend on the api instance', async (t) => {
  const source = (path: string) => fileURLToPath(new URL(`../${path}`, import.meta.url))
  const graph = moduleGraph(source('src/ops.ts'))
  t.ok(graph.has(source('src/server-options.ts')), 'the options both instances share come from their own module')
  t.notOk(graph.has(source('src/app.ts')), 'src/ops.ts reaches nothing of src/app.ts')
})

t.test('unknown routes answer a JSON 404', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const res = await app.inject({ method: 'GET', url: '/v1/nothing-here?x=1' })
  t.equal(res.statusCode, 404)
  t.match(res.headers['content-type'], /application\/json/)
  t.same(res.json(), { statusCode: 404, error: 'Not Found', message: 'Route GET /v1/nothing-here not found' })
})

t.test('error handler: 4xx keep their message, 5xx are generic and carry no internals', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  app.get('/boom', async () => {
    throw new Error('relation "secret_table" does not exist at /srv/app/x.js:12')
  })
  app.get('/teapot', async () => {
    throw app.httpErrors.conflict('Session is busy')
  })
  app.get('/gateway', async () => {
    throw app.httpErrors.createError(504, 'Agent "writer" did not answer within 60000 ms', { expose: true, code: 'LLM_TIMEOUT' })
  })
  app.get('/domain', async () => {
    throw new DomainError('busy', 'A reply is running', { code: 'SESSION_BUSY', retryAfterSeconds: 3, details: { sessionId: 's' } })
  })
  app.post('/echo', { schema: { body: { type: 'object', required: ['content'], properties: { content: { type: 'string', minLength: 1 } } } } }, async (req) => req.body)

  const boom = await app.inject({ method: 'GET', url: '/boom' })
  t.equal(boom.statusCode, 500)
  t.same(boom.json(), { statusCode: 500, error: 'Internal Server Error', message: 'Something went wrong on our side; it has been logged.' })
  t.notMatch(boom.body, /secret_table|x\.js|stack/)

  const conflict = await app.inject({ method: 'GET', url: '/teapot' })
  t.equal(conflict.statusCode, 409)
  t.equal(conflict.json().message, 'Session is busy')

  const gateway = await app.inject({ method: 'GET', url: '/gateway' })
  t.equal(gateway.statusCode, 504)
  t.same(gateway.json(), { statusCode: 504, error: 'Gateway Timeout', message: 'Agent "writer" did not answer within 60000 ms', code: 'LLM_TIMEOUT' })

  const domain = await app.inject({ method: 'GET', url: '/domain' })
  t.equal(domain.statusCode, 409, 'a domain kind maps to its status')
  t.equal(domain.headers['retry-after'], '3')
  t.same(domain.json(), { statusCode: 409, error: 'Conflict', message: 'A reply is running', code: 'SESSION_BUSY', details: { sessionId: 's' } })

  const invalid = await app.inject({ method: 'POST', url: '/echo', payload: { content: '' } })
  t.equal(invalid.statusCode, 400)
  t.match(invalid.json(), { statusCode: 400, error: 'Bad Request', code: 'FST_ERR_VALIDATION', details: [{ field: '/content' }] })
  t.match(invalid.json().message, /content/)

  const malformed = await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'application/json' }, payload: '{"content": ' })
  t.equal(malformed.statusCode, 400)
  t.match(malformed.json().message, /JSON/i)

  const media = await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'text/csv' }, payload: 'a,b' })
  t.equal(media.statusCode, 415)
  t.equal(media.json().error, 'Unsupported Media Type')
})

t.test('bodies over BODY_LIMIT are refused with 413', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { BODY_LIMIT: '1024' }))
  app.post('/echo', async (req) => req.body)
  const ok = await app.inject({ method: 'POST', url: '/echo', payload: { content: 'x'.repeat(900) } })
  t.equal(ok.statusCode, 200)
  const tooLarge = await app.inject({ method: 'POST', url: '/echo', payload: { content: 'x'.repeat(2000) } })
  t.equal(tooLarge.statusCode, 413)
  t.equal(tooLarge.json().error, 'Payload Too Large')
})

t.test('under pressure the api sheds load with 503 and Retry-After', async (t) => {
  // A heap limit of one byte is exceeded from under-pressure's first sample on: deterministic.
  const app = await buildTestApp(t, await testEnv(t, { MAX_HEAP_USED_BYTES: '1', RETRY_AFTER_SECONDS: '7' }))
  await app.ready()
  let res = await app.inject({ method: 'GET', url: '/' })
  await eventually(async () => {
    res = await app.inject({ method: 'GET', url: '/' })
    return res.statusCode === 503
  }, 5000)
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '7')
  t.match(res.json(), { statusCode: 503, error: 'Service Unavailable', code: 'OVERLOADED' })
  t.match(res.json().message, /overloaded \(heapUsedBytes at \d+\); retry after 7 s/)
})

t.test('the OpenAPI document describes the routes', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json()
  t.equal(doc.openapi, '3.1.0')
  t.equal(doc.info.version, pkg.version)
  t.ok(doc.paths['/'], 'GET / is documented')
  t.ok(doc.paths['/'].get.responses['200'], 'with its response schema')
  const ui = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(ui.statusCode, 200)
  t.match(ui.headers['content-type'], /text\/html/)
})

t.test('request ids are taken from X-Request-Id', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  app.get('/id', async (req) => ({ id: req.id }))
  const res = await app.inject({ method: 'GET', url: '/id', headers: { 'x-request-id': 'abc-123' } })
  t.equal(res.json().id, 'abc-123')
})

/** The api instance with its production logger options, its lines captured (parsed) instead of written. */
async function buildLoggedApp (t: Test, env: Record<string, string>) {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line))
      done()
    }
  })
  const { transport: _pretty, ...options } = loggerOptions('info')
  const app = await buildApp({ env: { ...(await testEnv(t)), LOG_LEVEL: 'info', ...env }, logger: pino(options, stream) })
  t.teardown(() => app.close())
  return { app, lines }
}

t.test('one access line per api request, with its request id, status and duration', async (t) => {
  const { app, lines } = await buildLoggedApp(t, {})
  app.get('/boom', async () => {
    throw new Error('kaput')
  })
  await app.ready()
  lines.length = 0
  await app.inject({ method: 'GET', url: '/?x=1', headers: { 'x-request-id': 'req-abc', authorization: 'Bearer sk-secret' } })
  await app.inject({ method: 'GET', url: '/no/such/route' })
  await app.inject({ method: 'GET', url: '/boom' })

  const access = lines.filter((l) => 'responseTimeMs' in l)
  t.equal(access.length, 3, 'one line per request, no "incoming request" lines')
  t.match(access[0], { level: 30, reqId: 'req-abc', method: 'GET', url: '/?x=1', statusCode: 200, msg: 'request completed' })
  t.type(access[0]?.responseTimeMs, 'number')
  t.notOk('req' in (access[0] ?? {}) || 'res' in (access[0] ?? {}), 'no serialised request or response objects')
  t.match(access[1], { level: 30, method: 'GET', url: '/no/such/route', statusCode: 404, msg: 'request completed' })
  t.match(access[2], { level: 30, method: 'GET', url: '/boom', statusCode: 500, msg: 'request completed' })
  t.match(lines.find((l) => l.level === 50), { reqId: access[2]?.reqId, err: { message: 'kaput' } }, 'the 500 is logged with its error, under the same request id')
  t.notMatch(JSON.stringify(lines), /sk-secret/, 'no credentials')
})

t.test('ACCESS_LOG=false: no access lines, other logging unchanged', async (t) => {
  const { app, lines } = await buildLoggedApp(t, { ACCESS_LOG: 'false' })
  await app.ready()
  lines.length = 0
  t.equal((await app.inject({ method: 'GET', url: '/' })).statusCode, 200)
  t.equal(lines.filter((l) => 'responseTimeMs' in l).length, 0)
})
