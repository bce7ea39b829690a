import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import t, { type Test } from 'tap'
import type { FastifyInstance, RouteOptions } from 'fastify'
import { buildTestApp, testEnv } from './helper.js'

interface Operation {
  summary?: string
  responses: Record<string, unknown>
  security?: unknown
  parameters?: Array<{ name: string; in: string }>
  requestBody?: unknown
}

/**
 * The api instance as the server builds it, with every route it registers: Fastify announces each
 * new instance on the `fastify.initialization` diagnostics channel before any plugin runs, which
 * lets an `onRoute` hook see them all.
 */
async function buildWithRoutes (t: Test): Promise<{ app: FastifyInstance; routes: RouteOptions[] }> {
  const routes: RouteOptions[] = []
  const onInstance = (message: unknown) => {
    (message as { fastify: FastifyInstance }).fastify.addHook('onRoute', (route) => {
      routes.push(route)
    })
  }
  subscribe('fastify.initialization', onInstance)
  try {
    const app = await buildTestApp(t, await testEnv(t))
    await app.ready()
    return { app, routes }
  } finally {
    unsubscribe('fastify.initialization', onInstance)
  }
}

/** "/v1/sessions/:id" → "/v1/sessions/{id}", as OpenAPI writes a path. */
const openApiPath = (url: string) => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')

t.test('/docs/json describes every route the api registers, and nothing else', async (t) => {
  const { app, routes } = await buildWithRoutes(t)
  const doc = (await app.inject('/docs/json')).json() as { paths: Record<string, Record<string, Operation>>; components: { securitySchemes: Record<string, unknown> } }

  // Left out: the documentation's own routes (/docs, /docs/json...), and the HEAD route Fastify adds
  // beside each GET, not an operation of its own (@fastify/swagger leaves them out too). Any other
  // route must be in the document, a hidden one included.
  const registered = routes
    .filter((route) => route.url !== '/docs' && !route.url.startsWith('/docs/'))
    .flatMap((route) => [route.method].flat().filter((method) => method !== 'HEAD').map((method) => `${method.toLowerCase()} ${openApiPath(route.url)}`))
  const documented = Object.entries(doc.paths).flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method} ${path}`))
  t.ok(registered.length >= 12, `the api's routes were seen (${registered.length})`)
  t.same([...new Set(registered)].sort(), documented.sort(), 'the same operations, both ways')

  for (const key of documented) {
    const [method, path] = key.split(' ') as [string, string]
    const operation = doc.paths[path]![method]!
    t.ok(operation.summary, `${key} has a summary`)
    const statuses = Object.keys(operation.responses)
    t.ok(statuses.some((status) => status.startsWith('2')), `${key} documents its success`)
    if (path.startsWith('/v1/')) {
      t.ok(statuses.includes('401'), `${key} documents 401`)
      t.same(operation.security, [{ bearerAuth: [] }], `${key} needs the bearer key`)
    }
    for (const [, name] of path.matchAll(/\{([^}]+)\}/g)) {
      t.ok(operation.parameters?.some((p) => p.name === name && p.in === 'path'), `${key} documents its path parameter ${name}`)
    }
  }
  const postMessage = doc.paths['/v1/sessions/{id}/messages']?.post
  t.ok(postMessage?.requestBody, 'the message body is described')
  t.ok(postMessage?.parameters?.some((p) => p.name === 'idempotency-key'), 'and its Idempotency-Key header')
  t.ok(doc.components.securitySchemes.bearerAuth)
})
