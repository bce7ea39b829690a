import t, { type Test } from 'tap'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import sensible from '@fastify/sensible'
import swagger from '@fastify/swagger'
import fp from 'fastify-plugin'
import pino from 'pino'
import { Registry } from 'prom-client'
import config from '../../plugins/config.js'
import agents, { resolveAgentsFile } from '../../plugins/agents.js'
import agentsRoutes from '../../routes/agents/index.js'
import type { Environment } from '../../src/config.js'
import { installErrorHandlers } from '../../src/errors.js'
import { PROJECT_ROOT } from '../../src/paths.js'

// src/app.ts registers these plugins in the same order (config, error handlers, sensible, ...,
// agents, routes); this file builds only what the agents API needs, so it runs without a database.

interface Built {
  app: FastifyInstance
  logs: Array<{ level: number; msg: string; [key: string]: unknown }>
}

async function build (t: Test, env: Environment = {}): Promise<Built> {
  const logs: Built['logs'] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line))
      done()
    }
  })
  const app = Fastify({ loggerInstance: pino({ level: 'info' }, stream) as FastifyBaseLogger }).withTypeProvider<TypeBoxTypeProvider>()
  t.teardown(() => app.close())
  await app.register(config, { env: { NODE_ENV: 'test', ...env } })
  installErrorHandlers(app)
  await app.register(sensible)
  // plugins/metrics.ts needs PostgreSQL and Redis; the agents plugin needs only the registry it decorates.
  await app.register(fp(async (instance) => {
    instance.decorate('metricsRegistry', new Registry())
  }, { name: 'metrics' }))
  await app.register(agents)
  await app.register(swagger, {
    openapi: { openapi: '3.1.0', info: { title: 'test', version: '0' }, components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } } }
  })
  await app.register(agentsRoutes, { prefix: '/v1/agents' })
  await app.ready()
  return { app, logs }
}

const teamYaml = `agents:
  - id: local
    name: Local
    description: Runs offline
    provider: echo
    model: echo-1
    expertise: [offline]
  - id: cloud
    name: Cloud
    description: A hosted model
    provider: openai
    model: gpt-4o-mini
    expertise: []
    fallback: local
`

t.test('GET /v1/agents lists the default team on echo when no key is set', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/v1/agents' })
  t.equal(res.statusCode, 200)
  const { agents } = res.json()
  t.same(agents.map((agent: { id: string }) => agent.id), ['assistant', 'coder', 'writer'])
  for (const agent of agents) {
    t.same(Object.keys(agent).sort(), ['configuredProvider', 'description', 'expertise', 'id', 'model', 'name', 'provider', 'status'])
    t.equal(agent.provider, 'echo', `${agent.id} answers with echo`)
    t.equal(agent.status, 'healthy')
  }
  t.same(agents.map((agent: { configuredProvider: string }) => agent.configuredProvider), ['openai', 'anthropic', 'gemini'])
  t.equal(agents[0].model, 'gpt-4o-mini')
  t.ok(agents[1].expertise.includes('sql'))
})

t.test('GET /v1/agents/:agentId answers one agent with its health', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/v1/agents/coder' })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.match(body, {
    id: 'coder',
    name: 'Coder',
    provider: 'echo',
    configuredProvider: 'anthropic',
    model: 'claude-haiku-4-5',
    status: 'healthy',
    fallback: 'assistant',
    health: { status: 'healthy', checkedAt: null, message: 'answers with the built-in echo provider (no ANTHROPIC_API_KEY)' }
  })
  t.equal((await app.inject('/v1/agents/assistant')).json().fallback, null)
})

t.test('health set by the monitor shows in both routes', async (t) => {
  const { app } = await build(t)
  const checkedAt = new Date('2026-01-02T03:04:05.000Z')
  t.equal(app.agents.setStatus('writer', 'down', 'provider timed out 3 times', checkedAt), 'healthy', 'returns the previous status')
  t.equal((await app.inject('/v1/agents')).json().agents[2].status, 'down')
  t.same((await app.inject('/v1/agents/writer')).json().health, { status: 'down', checkedAt: checkedAt.toISOString(), message: 'provider timed out 3 times' })
})

t.test('unknown agent: 404 with the error body', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/v1/agents/nobody' })
  t.equal(res.statusCode, 404)
  t.same(res.json(), { statusCode: 404, error: 'Not Found', message: 'Agent "nobody" not found' })
})

t.test('an id that cannot be an agent id: 400 naming the parameter', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/v1/agents/Not%20An%20Id' })
  t.equal(res.statusCode, 400)
  t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /agentId/ })
})

t.test('unknown routes and methods under /v1/agents: the 404 body', async (t) => {
  const { app } = await build(t)
  const nested = await app.inject({ method: 'GET', url: '/v1/agents/coder/extra' })
  t.equal(nested.statusCode, 404)
  t.same(nested.json(), { statusCode: 404, error: 'Not Found', message: 'Route GET /v1/agents/coder/extra not found' })
  const post = await app.inject({ method: 'POST', url: '/v1/agents', payload: {} })
  t.equal(post.statusCode, 404)
  t.equal(post.json().error, 'Not Found')
})

t.test('the OpenAPI document describes both routes', async (t) => {
  const { app } = await build(t)
  const doc = app.swagger() as unknown as { paths: Record<string, Record<string, { tags: string[]; security: unknown; responses: Record<string, unknown>; parameters?: Array<{ name: string }> }>> }
  const list = doc.paths['/v1/agents/']?.get
  const one = doc.paths['/v1/agents/{agentId}']?.get
  t.ok(list && one, Object.keys(doc.paths).join(', '))
  t.same(list!.tags, ['agents'])
  t.same(one!.security, [{ bearerAuth: [] }])
  t.same(Object.keys(one!.responses).sort(), ['200', '400', '401', '404'])
  t.same(one!.parameters?.map((p) => p.name), ['agentId'])
})

t.test('a custom manifest; with its key an agent answers with its real provider, and no warning is logged', async (t) => {
  const dir = t.testdir({ 'team.yaml': teamYaml })
  // The base URL points at a closed loopback port: nothing here calls a provider, and nothing could reach the internet.
  const { app, logs } = await build(t, { AGENTS_FILE: join(dir, 'team.yaml'), OPENAI_API_KEY: 'sk-test-not-a-real-key', OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' })
  const { agents } = (await app.inject('/v1/agents')).json()
  t.same(agents.map((agent: { id: string; provider: string }) => [agent.id, agent.provider]), [['local', 'echo'], ['cloud', 'openai']])
  t.equal((await app.inject('/v1/agents/cloud')).json().health.message, 'not checked yet')
  t.equal(app.agents.effectiveProvider('cloud'), 'openai')
  t.equal(app.agents.providerFor('cloud').name, 'openai')
  t.same(app.agents.defaultAgentIds(), ['local', 'cloud'])

  t.equal(logs.filter((line) => line.level === 40).length, 0, 'no agent on echo, no warning')
  t.notMatch(JSON.stringify(logs), /sk-test/, 'the key is never logged')
})

t.test('the start-up log names every agent on echo and why', async (t) => {
  const { logs } = await build(t)
  const warnings = logs.filter((line) => line.level === 40)
  t.equal(warnings.length, 1)
  t.equal(
    warnings[0]!.msg,
    'agents answering with the built-in echo provider instead of a real model: assistant (openai: no OPENAI_API_KEY), coder (anthropic: no ANTHROPIC_API_KEY), writer (gemini: no GEMINI_API_KEY)'
  )
  t.match(logs.find((line) => line.msg === 'loaded 3 agents and 2 group presets'), { agents: ['assistant', 'coder', 'writer'], groups: ['review-panel', 'brainstorm'], file: join(PROJECT_ROOT, 'agents', 'default.yaml') })
})

t.test('an all-echo manifest logs no warning', async (t) => {
  const dir = t.testdir({ 'echo.yaml': 'agents:\n  - { id: solo, name: Solo, provider: echo, model: echo }\n' })
  const { logs } = await build(t, { AGENTS_FILE: join(dir, 'echo.yaml') })
  t.equal(logs.filter((line) => line.level >= 40).length, 0)
})

t.test('a bad manifest stops start-up with a message naming the file, agent and field', async (t) => {
  const dir = t.testdir({ 'bad.yaml': teamYaml.replace('model: gpt-4o-mini', 'model: gpt-4o-mini\n    maxTokens: lots') })
  const file = join(dir, 'bad.yaml')
  await t.rejects(build(t, { AGENTS_FILE: file }), {
    name: 'ManifestError',
    message: `${file}: agent 2 ("cloud"): maxTokens must be integer (got "lots")`
  })
  await t.rejects(build(t, { AGENTS_FILE: join(dir, 'missing.yaml') }), {
    message: `${join(dir, 'missing.yaml')}: cannot read the agents manifest (file not found)`
  })
})

t.test('AGENTS_FILE resolution', async (t) => {
  const dir = t.testdir({ agents: { 'default.yaml': teamYaml }, 'custom.yaml': teamYaml, elsewhere: {} })
  t.equal(resolveAgentsFile('/etc/smalltalk/agents.yaml', dir), '/etc/smalltalk/agents.yaml', 'absolute as is')
  t.equal(resolveAgentsFile('custom.yaml', dir), join(dir, 'custom.yaml'), 'relative to the working directory')
  t.equal(resolveAgentsFile('agents/default.yaml', dir), join(dir, 'agents', 'default.yaml'), 'the default, when present in the working directory')
  const elsewhere = join(dir, 'elsewhere')
  t.equal(resolveAgentsFile('agents/default.yaml', elsewhere), join(PROJECT_ROOT, 'agents', 'default.yaml'), 'the default beside package.json otherwise')
  t.equal(resolveAgentsFile('nope.yaml', elsewhere), join(elsewhere, 'nope.yaml'), 'any other missing file is reported where it was looked for')
})
