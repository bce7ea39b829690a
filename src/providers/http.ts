import { Readable } from 'node:stream'
import { Agent, request } from 'undici'

/**
 * The `fetch` the provider SDKs are given: undici's request API (the HTTP client inside Node's own
 * fetch, without the WHATWG machinery around it) behind the fetch signature the SDKs call. Node's
 * global fetch cost 0.6 to 0.95 ms of CPU per chat completion to a loopback stub; this costs 0.36 to
 * 0.43 ms (the same SDK call, 10 at a time), and on a busy replica that is most of what a reply costs
 * beyond its SQL. The SDKs still build the requests and read the answers, as WHATWG Responses.
 *
 * Differences from fetch, on purpose: no redirects are followed (a provider API answers or fails),
 * and bodies are asked for without compression (`accept-encoding: identity`), since nothing here
 * would decompress them. A request this cannot carry (a Request object, a streamed or form body:
 * nothing our adapters send) goes to the global fetch.
 */
export async function providerFetch (input: string | URL | Request, init: RequestInit = {}): Promise<Response> {
  const body = init.body
  if (input instanceof Request || (body !== undefined && body !== null && typeof body !== 'string' && !(body instanceof Uint8Array))) {
    return fetch(input, init)
  }
  const method = (init.method ?? 'GET').toUpperCase()
  const response = await request(input, {
    method: method as 'GET',
    headers: requestHeaders(init.headers),
    body: body ?? undefined,
    signal: init.signal ?? undefined,
    dispatcher
  })
  const headers = new Headers()
  for (const [name, value] of Object.entries(response.headers)) {
    if (Array.isArray(value)) for (const item of value) headers.append(name, item)
    else if (value !== undefined) headers.append(name, value)
  }
  const status = response.statusCode
  if (status === 204 || status === 304 || method === 'HEAD') {
    response.body.resume()
    return new Response(null, { status, headers })
  }
  // An event stream is handed over as it arrives (the SDKs read the tokens from it); any other
  // answer is read whole first, which costs less than a stream the SDK then reads whole anyway.
  const streamed = headers.get('content-type')?.includes('text/event-stream') ?? false
  return new Response(streamed ? (Readable.toWeb(response.body) as ReadableStream<Uint8Array>) : await response.body.arrayBuffer(), { status, headers })
}

// Keep-alive connections to each provider, as the global fetch keeps them.
const dispatcher = new Agent({ keepAliveTimeout: 30_000 })

function requestHeaders (init: HeadersInit | undefined): Record<string, string> {
  const headers: Record<string, string> = {}
  new Headers(init).forEach((value, name) => {
    headers[name] = value
  })
  headers['accept-encoding'] = 'identity'
  return headers
}
