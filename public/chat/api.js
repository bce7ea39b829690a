// The page's client of the SmallTalk API: JSON calls and a Server-Sent Events reader over fetch()
// (EventSource cannot POST nor send an Authorization header).

/** A non-2xx answer: its status, the error body of DESIGN section 3, and Retry-After in seconds. */
export class ApiError extends Error {
  constructor (status, body, retryAfter) {
    super(body?.message ?? `HTTP ${status}`)
    this.status = status
    this.body = body
    this.retryAfter = retryAfter
  }
}

/**
 * Incremental SSE parsing (the WHATWG event-stream format): feed it text as it arrives, it returns
 * the events completed so far as { event, data, id }, `data` parsed as JSON.
 */
export class SseParser {
  constructor () {
    this.buffer = ''
    this.reset()
  }

  reset () {
    this.event = ''
    this.data = []
    this.id = ''
  }

  feed (text) {
    this.buffer += text
    const events = []
    let end
    while ((end = this.buffer.search(/\r\n|\r|\n/)) !== -1) {
      const line = this.buffer.slice(0, end)
      // A lone \r at the very end may be the first half of \r\n: wait for the next chunk.
      if (this.buffer[end] === '\r' && end === this.buffer.length - 1) break
      this.buffer = this.buffer.slice(end + (this.buffer.startsWith('\r\n', end) ? 2 : 1))
      if (line === '') {
        if (this.data.length > 0) events.push({ event: this.event || 'message', data: JSON.parse(this.data.join('\n')), id: this.id })
        this.reset()
        continue
      }
      if (line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon === -1 ? line : line.slice(0, colon)
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '')
      if (field === 'event') this.event = value
      else if (field === 'data') this.data.push(value)
      else if (field === 'id') this.id = value
    }
    return events
  }
}

async function failure (response) {
  let body
  try {
    body = await response.json()
  } catch {
    body = { statusCode: response.status, error: response.statusText, message: `HTTP ${response.status}` }
  }
  const retryAfter = Number(response.headers.get('retry-after'))
  return new ApiError(response.status, body, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : undefined)
}

/** A client whose calls carry the key `getKey()` returns, when there is one. */
export function createApi (getKey) {
  const headers = (extra) => {
    const key = getKey()
    return { ...extra, ...(key ? { authorization: `Bearer ${key}` } : {}) }
  }

  async function call (method, path, body, extra = {}) {
    const response = await fetch(path, {
      method,
      headers: headers(body === undefined ? { accept: 'application/json', ...extra } : { accept: 'application/json', 'content-type': 'application/json', ...extra }),
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    if (!response.ok) throw await failure(response)
    return response.status === 204 ? undefined : response.json()
  }

  /** POSTs `body` asking for an event stream; calls onEvent(event, data) for each event, in order. */
  async function stream (path, body, onEvent) {
    const response = await fetch(path, {
      method: 'POST',
      headers: headers({ accept: 'text/event-stream', 'content-type': 'application/json' }),
      body: JSON.stringify(body)
    })
    if (!response.ok) throw await failure(response)
    const parser = new SseParser()
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      for (const { event, data } of parser.feed(value)) onEvent(event, data)
    }
  }

  return {
    get: (path) => call('GET', path),
    post: (path, body) => call('POST', path, body ?? {}),
    /** A PATCH with If-Match: the version it changes (optimistic locking). */
    patch: (path, body, version) => call('PATCH', path, body, { 'if-match': `"${version}"` }),
    delete: (path) => call('DELETE', path),
    stream
  }
}
