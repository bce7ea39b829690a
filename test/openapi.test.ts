import t from 'tap'
import { buildTestApp, testEnv } from './helper.js'

t.test('/docs/json describes every public route, with parameters and responses', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const routes: { method: string; url: string }[] = []
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url })
  })
  await app.ready()
  const doc = (await app.inject('/docs/json')).json()
  const expected = [
    ['get', '/'],
    ['get', '/v1/agents/'],
    ['get', '/v1/agents/{agentId}'],
    ['post', '/v1/sessions/'],
    ['get', '/v1/sessions/'],
    ['get', '/v1/sessions/{id}'],
    ['patch', '/v1/sessions/{id}'],
    ['delete', '/v1/sessions/{id}'],
    ['post', '/v1/sessions/{id}/messages'],
    ['get', '/v1/sessions/{id}/messages'],
    ['get', '/v1/events/'],
    ['get', '/v1/events/stream']
  ]
  for (const [method, path] of expected) {
    const operation = doc.paths[path as string]?.[method as string]
    t.ok(operation, `${method?.toUpperCase()} ${path} is documented`)
    if (!operation) continue
    t.ok(operation.summary, `${path} has a summary`)
    const statuses = Object.keys(operation.responses)
    t.ok(statuses.some((s) => s.startsWith('2')), `${method} ${path} documents its success`)
    if (path !== '/') {
      t.ok(statuses.includes('401'), `${method} ${path} documents 401`)
      t.same(operation.security, [{ bearerAuth: [] }])
    }
    if (path.includes('{id}')) t.ok(operation.parameters.some((p: { name: string; in: string }) => p.name === 'id' && p.in === 'path'))
  }
  t.ok(doc.paths['/v1/sessions/{id}/messages'].post.requestBody, 'the message body is described')
  t.ok(doc.paths['/v1/sessions/{id}/messages'].post.parameters.some((p: { name: string }) => p.name === 'idempotency-key'))
  t.ok(doc.components.securitySchemes.bearerAuth)
})
