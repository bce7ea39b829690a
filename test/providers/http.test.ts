import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { providerFetch } from '../../src/providers/http.js'

// The fetch the provider SDKs are given (undici's request API behind the fetch signature): what it
// sends, and the WHATWG Response it gives back, against a loopback server.

async function server (t: Test) {
  const seen: Array<{ method: string; url: string; headers: IncomingHttpHeaders; body: string }> = []
  const srv = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => (body += chunk))
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      if (req.url === '/empty') {
        res.writeHead(204).end()
        return
      }
      if (req.url === '/cookies') {
        res.writeHead(200, [['content-type', 'text/plain'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2']]).end('ok')
        return
      }
      if (req.url === '/events') {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write('data: one\n\n')
        setTimeout(() => res.end('data: two\n\n'), 300)
        return
      }
      res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-type': 'application/json', 'x-request-id': 'r-1' }).end(JSON.stringify({ echoed: body }))
    })
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => srv.close(() => resolve())))
  return { base: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen }
}

t.test('a JSON request and answer: method, headers, body, status, identity encoding', async (t) => {
  const { base, seen } = await server(t)
  const response = await providerFetch(`${base}/v1/chat`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer k', 'accept-encoding': 'gzip' }, body: '{"a":1}' })
  t.equal(response.status, 200)
  t.equal(response.headers.get('x-request-id'), 'r-1')
  t.same(await response.json(), { echoed: '{"a":1}' })
  t.equal(seen[0]?.method, 'POST')
  t.equal(seen[0]?.headers.authorization, 'Bearer k')
  t.equal(seen[0]?.headers['accept-encoding'], 'identity', 'never a compressed answer: nothing would decompress it')
  const missing = await providerFetch(new URL(`${base}/missing`))
  t.equal(missing.status, 404, 'an error status is an answer, not a throw')
  t.equal(missing.ok, false)
})

t.test('204 has no body; repeated headers are kept', async (t) => {
  const { base } = await server(t)
  const empty = await providerFetch(`${base}/empty`, { method: 'DELETE' })
  t.equal(empty.status, 204)
  t.equal(await empty.text(), '')
  const cookies = await providerFetch(`${base}/cookies`)
  t.same(cookies.headers.getSetCookie(), ['a=1', 'b=2'])
})

t.test('an event stream is handed over as it arrives', async (t) => {
  const { base } = await server(t)
  const started = Date.now()
  const response = await providerFetch(`${base}/events`)
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  const first = await reader.read()
  t.match(new TextDecoder().decode(first.value), /data: one/)
  t.ok(Date.now() - started < 250, 'the first event before the stream ends')
  let rest = ''
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += new TextDecoder().decode(chunk.value)
  t.match(rest, /data: two/)
})

t.test('an abort rejects with the signal\'s reason; a Request object goes to the global fetch', async (t) => {
  const { base } = await server(t)
  const controller = new AbortController()
  const reason = new Error('caller gave up')
  controller.abort(reason)
  await t.rejects(providerFetch(`${base}/v1/chat`, { signal: controller.signal }), reason)
  const viaRequest = await providerFetch(new Request(`${base}/v1/chat`, { method: 'POST', body: 'x' }))
  t.same(await viaRequest.json(), { echoed: 'x' })
})
