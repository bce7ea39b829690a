import t from 'tap'
import { displayUrl, failure, fromHttpFailure, fromStreamError, fromTransportError, kindForStatus, kindForType, redact, retryAfterMs, type CallContext } from '../../src/providers/errors.js'
import { ProviderError } from '../../src/providers/provider.js'

const KEY = 'sk-live-abcdef0123456789'

function context (signal: AbortSignal = new AbortController().signal): CallContext {
  return { provider: 'openai', model: 'gpt-x', baseUrl: 'https://user:secret@api.example.test/v1?token=x', apiKey: KEY, signal }
}

t.test('kinds by status', async (t) => {
  const cases: [number, string][] = [[400, 'bad_request'], [401, 'auth'], [403, 'auth'], [404, 'bad_request'], [408, 'timeout'], [409, 'bad_request'], [422, 'bad_request'], [429, 'rate_limited'], [500, 'server'], [502, 'server'], [503, 'server'], [504, 'server'], [529, 'server']]
  for (const [status, kind] of cases) t.equal(kindForStatus(status), kind, String(status))
})

t.test('kinds of in-stream error types, Anthropic and Google words alike', async (t) => {
  t.equal(kindForType('overloaded_error'), 'server')
  t.equal(kindForType('api_error'), 'server')
  t.equal(kindForType('rate_limit_error'), 'rate_limited')
  t.equal(kindForType('RESOURCE_EXHAUSTED'), 'rate_limited')
  t.equal(kindForType('invalid_request_error'), 'bad_request')
  t.equal(kindForType('PERMISSION_DENIED'), 'auth')
  t.equal(kindForType('DEADLINE_EXCEEDED'), 'timeout')
  t.equal(kindForType(undefined), 'server', 'an unnamed break of an accepted reply is the server\'s')
})

t.test('Retry-After: retry-after-ms, seconds, HTTP date, Google RetryInfo, nothing', async (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z')
  t.equal(retryAfterMs(new Headers({ 'retry-after-ms': '250.4' })), 250)
  t.equal(retryAfterMs(new Headers({ 'retry-after-ms': '250', 'retry-after': '9' })), 250, 'retry-after-ms wins')
  t.equal(retryAfterMs(new Headers({ 'retry-after': '12' })), 12_000)
  t.equal(retryAfterMs(new Headers({ 'retry-after': '0.5' })), 500)
  t.equal(retryAfterMs(new Headers({ 'retry-after': 'Thu, 01 Jan 2026 00:00:20 GMT' }), undefined, now), 20_000)
  t.equal(retryAfterMs(new Headers({ 'retry-after': 'Wed, 31 Dec 2025 23:59:00 GMT' }), undefined, now), 0, 'a date in the past: at once')
  t.equal(retryAfterMs(new Headers({ 'retry-after': 'soon' })), undefined)
  t.equal(retryAfterMs(undefined, { error: { details: [{ '@type': 'type.googleapis.com/google.rpc.Help' }, { retryDelay: '1.5s' }] } }), 1500)
  t.equal(retryAfterMs(new Headers()), undefined)
})

t.test('redact and displayUrl', async (t) => {
  t.equal(redact(`key ${KEY} and again ${KEY}`, KEY), 'key [redacted] and again [redacted]')
  t.equal(redact('abc', 'ab'), 'abc', 'a too short key is left alone (it would redact common text)')
  t.equal(redact('abc', undefined), 'abc')
  t.equal(displayUrl('https://user:secret@api.example.test/v1/?token=x'), 'https://api.example.test/v1', 'no credentials, no query')
  t.equal(displayUrl('not a url'), '(invalid base URL)')
})

t.test('an HTTP failure: message, status, Retry-After only where a retry makes sense, no key anywhere', async (t) => {
  const cause = new Error(`401 Incorrect API key provided: ${KEY}`)
  const error = fromHttpFailure({ status: 401, headers: new Headers({ 'retry-after': '3' }), message: `Incorrect API key provided: ${KEY}` }, context(), cause)
  t.match(error, { name: 'ProviderError', kind: 'auth', status: 401, provider: 'openai', retryAfterMs: undefined })
  t.equal(error.message, 'openai (model gpt-x) answered HTTP 401 (authentication failed, check the API key): Incorrect API key provided: [redacted]')
  t.equal(error.cause, undefined, 'a cause that carries the key is dropped')
  t.notMatch(JSON.stringify({ message: error.message, stack: error.stack }), KEY)

  const limited = fromHttpFailure({ status: 429, headers: new Headers({ 'retry-after': '3' }), message: '' }, context(), new Error('429'))
  t.match(limited, { kind: 'rate_limited', retryAfterMs: 3000, message: 'openai (model gpt-x) answered HTTP 429 (rate limited)' })
  t.ok(limited.cause instanceof Error, 'a harmless cause is kept')
  const long = fromHttpFailure({ status: 500, headers: undefined, message: 'x'.repeat(2000) }, context())
  t.ok(long.message.length < 700, 'a huge body is truncated')
  t.equal(fromHttpFailure({ status: 418, headers: undefined, message: '' }, context()).kind, 'bad_request')
})

t.test('transport failures: refused, reset, DNS, TLS, timeouts, unparseable', async (t) => {
  const wrapped = (code: string) => new TypeError('fetch failed', { cause: Object.assign(new Error(`connect ${code}`), { code }) })
  t.match(fromTransportError(wrapped('ECONNREFUSED'), context()), { kind: 'connection', message: /connection to https:\/\/api\.example\.test\/v1 failed: connection refused/ })
  t.match(fromTransportError(wrapped('ECONNRESET'), context()), { kind: 'connection', message: /ECONNRESET/ })
  t.match(fromTransportError(wrapped('ENOTFOUND'), context()), { kind: 'connection', message: /does not resolve/ })
  t.match(fromTransportError(wrapped('ERR_TLS_CERT_ALTNAME_INVALID'), context()), { kind: 'connection', message: /TLS failure/ })
  t.match(fromTransportError(wrapped('UND_ERR_HEADERS_TIMEOUT'), context()), { kind: 'timeout' })
  t.match(fromTransportError(new TypeError('terminated', { cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }) }), context()), { kind: 'connection', message: /closed the connection mid-reply/ })
  t.match(fromTransportError(new SyntaxError('Unexpected token < in JSON'), context()), { kind: 'invalid_response' })
  t.match(fromTransportError(new Error('something odd'), context()), { kind: 'invalid_response' })
  const same = new ProviderError('server', 'x', { provider: 'openai' })
  t.equal(fromTransportError(same, context()), same, 'a ProviderError passes through')
  t.notMatch(fromTransportError(wrapped('ECONNREFUSED'), context()).message, /secret|token/, 'no credentials of the base URL')
})

t.test('a stream error names the type', async (t) => {
  t.match(fromStreamError('overloaded_error', 'Overloaded', context()), { kind: 'server', message: 'openai (model gpt-x) reported an error mid-stream: overloaded_error: Overloaded' })
})

t.test('failure(): once the caller aborted, the caller gets its reason, whatever the SDK threw', async (t) => {
  const controller = new AbortController()
  const reason = new DOMException('deadline', 'TimeoutError')
  const map = () => new ProviderError('connection', 'x', { provider: 'openai' })
  t.type(failure(new Error('Request was aborted.'), context(controller.signal), map), ProviderError)
  controller.abort(reason)
  t.equal(failure(new Error('Request was aborted.'), context(controller.signal), map), reason)
})
