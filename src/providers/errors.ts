import { ProviderError, type ProviderErrorKind } from './provider.js'

/** What the error mapping knows of the call that failed: it names them in the message. */
export interface CallContext {
  /** The manifest's provider name (openai, openai-compatible, anthropic, gemini). */
  provider: string
  model: string
  /** The base URL the client talks to (named in connection errors; credentials in it are dropped). */
  baseUrl: string
  /** Removed from every message, whatever the provider echoed back. */
  apiKey: string | undefined
  /** The caller's signal: once it has aborted, its reason is what the caller gets. */
  signal: AbortSignal
}

/** An HTTP answer that was not a success, as the adapters see it whatever the SDK. */
export interface HttpFailure {
  status: number
  headers: Headers | undefined
  /** The provider's own words: `error.message` of its body, or the body text. */
  message: string
  /** The provider's error type or status word (overloaded_error, RESOURCE_EXHAUSTED...), when given. */
  type?: string | undefined
  /** The parsed body, for the Retry-After that Google sends inside it (RetryInfo.retryDelay). */
  body?: unknown
}

const STATUS_WORDS: Record<number, string> = {
  400: 'bad request',
  401: 'authentication failed, check the API key',
  403: 'permission denied, check the API key and its access to this model',
  404: 'not found, check the model name and the base URL',
  408: 'request timeout',
  409: 'conflict',
  413: 'request too large',
  422: 'unprocessable request',
  429: 'rate limited',
  500: 'internal server error',
  502: 'bad gateway',
  503: 'service unavailable',
  504: 'gateway timeout',
  529: 'overloaded'
}

/** The kind of failure an HTTP status means (issue 5: what the resilience layer acts on). */
export function kindForStatus (status: number): ProviderErrorKind {
  if (status === 401 || status === 403) return 'auth'
  if (status === 429) return 'rate_limited'
  if (status === 408) return 'timeout'
  if (status >= 500) return 'server'
  return 'bad_request'
}

/**
 * The kind of an error the provider reported inside a stream that had started (no HTTP status),
 * from its type word: Anthropic's `overloaded_error`, OpenAI's `server_error`, Google's `UNAVAILABLE`.
 * Unknown words count as a server failure: the provider broke off a reply it had accepted.
 */
export function kindForType (type: string | undefined): ProviderErrorKind {
  switch (type?.toLowerCase()) {
    case 'authentication_error':
    case 'permission_error':
    case 'unauthenticated':
    case 'permission_denied':
      return 'auth'
    case 'invalid_request_error':
    case 'not_found_error':
    case 'request_too_large':
    case 'invalid_argument':
    case 'not_found':
    case 'failed_precondition':
      return 'bad_request'
    case 'rate_limit_error':
    case 'resource_exhausted':
      return 'rate_limited'
    case 'deadline_exceeded':
    case 'timeout_error':
      return 'timeout'
    default:
      return 'server'
  }
}

/**
 * How long the provider asked to wait, in ms: `retry-after-ms` (OpenAI, Anthropic), else `Retry-After`
 * as seconds or an HTTP date, else Google's RetryInfo `retryDelay` ("37s") in the error body.
 */
export function retryAfterMs (headers: Headers | undefined, body?: unknown, now = Date.now()): number | undefined {
  const ms = headers?.get('retry-after-ms')
  if (ms) {
    const value = Number(ms)
    if (Number.isFinite(value) && value >= 0) return Math.round(value)
  }
  const after = headers?.get('retry-after')?.trim()
  if (after) {
    if (/^\d+(\.\d+)?$/.test(after)) return Math.round(Number(after) * 1000)
    const date = Date.parse(after)
    if (!Number.isNaN(date)) return Math.max(0, date - now)
  }
  return retryDelayFromBody(body)
}

function retryDelayFromBody (body: unknown): number | undefined {
  const details = (body as { error?: { details?: unknown } } | undefined)?.error?.details
  if (!Array.isArray(details)) return undefined
  for (const detail of details) {
    const delay = (detail as { retryDelay?: unknown } | null)?.retryDelay
    if (typeof delay === 'string') {
      const match = /^(\d+(?:\.\d+)?)s$/.exec(delay.trim())
      if (match) return Math.round(Number(match[1]) * 1000)
    }
  }
  return undefined
}

/** The message with every occurrence of the key replaced (providers echo keys back in 401 bodies). */
export function redact (text: string, apiKey: string | undefined): string {
  if (!apiKey || apiKey.length < 4) return text
  return text.split(apiKey).join('[redacted]')
}

/** The base URL without user:password@ or a query string, for messages. */
export function displayUrl (baseUrl: string): string {
  try {
    const url = new URL(baseUrl)
    url.username = ''
    url.password = ''
    url.search = ''
    return url.toString().replace(/\/$/, '')
  } catch {
    return '(invalid base URL)'
  }
}

/** A ProviderError from an HTTP status answer, with the provider's words and Retry-After. */
export function fromHttpFailure (failure: HttpFailure, context: CallContext, cause?: unknown): ProviderError {
  const kind = kindForStatus(failure.status)
  const words = STATUS_WORDS[failure.status] ?? (failure.status >= 500 ? 'server error' : 'request refused')
  const said = failure.message.trim() === '' ? '' : `: ${truncate(failure.message.trim())}`
  const message = `${context.provider} (model ${context.model}) answered HTTP ${failure.status} (${words})${said}`
  return build(kind, message, context, {
    status: failure.status,
    retryAfterMs: kind === 'rate_limited' || kind === 'server' ? retryAfterMs(failure.headers, failure.body) : undefined,
    cause
  })
}

/** A ProviderError for an error event inside a stream (the HTTP status was 200). */
export function fromStreamError (type: string | undefined, providerMessage: string, context: CallContext, cause?: unknown): ProviderError {
  const kind = kindForType(type)
  const what = type ? `${type}: ` : ''
  return build(kind, `${context.provider} (model ${context.model}) reported an error mid-stream: ${what}${truncate(providerMessage)}`, context, { cause })
}

/** The stream ended (cleanly, at the HTTP level) before the provider's end-of-reply marker. */
export function streamEndedEarly (context: CallContext, marker: string): ProviderError {
  return build('connection', `${context.provider} (model ${context.model}): the stream ended before ${marker}; the reply is incomplete`, context, {})
}

/** The client library's own timeout (or the socket's) fired before the caller's signal. */
export function timedOut (context: CallContext, cause?: unknown): ProviderError {
  return build('timeout', `${context.provider} (model ${context.model}): the request to ${displayUrl(context.baseUrl)} timed out`, context, { cause })
}

/** The provider answered 200 with something that is not the reply format. */
export function invalidResponse (context: CallContext, what: string, cause?: unknown): ProviderError {
  return build('invalid_response', `${context.provider} (model ${context.model}) sent a reply that could not be understood: ${truncate(what)}`, context, { cause })
}

/**
 * Any other failure of a call: a connection that could not be made or broke, the client library's
 * own timeout, an unparseable reply. `fromSdkError` in each adapter handles the SDK's HTTP errors
 * first and hands the rest here.
 */
export function fromTransportError (err: unknown, context: CallContext): ProviderError {
  if (err instanceof ProviderError) return err
  const chain = causes(err)
  const text = chain.map((e) => `${e.name} ${e.message} ${(e as NodeJS.ErrnoException).code ?? ''}`).join(' | ')
  if (chain.some((e) => e instanceof SyntaxError)) {
    return invalidResponse(context, chain.find((e) => e instanceof SyntaxError)!.message, err)
  }
  if (chain.some((e) => e.name === 'TimeoutError' || /timed? ?out|UND_ERR_(CONNECT|HEADERS|BODY)_TIMEOUT|ETIMEDOUT/i.test(`${e.name} ${e.message} ${(e as NodeJS.ErrnoException).code ?? ''}`))) {
    return timedOut(context, err)
  }
  const code = chain.map((e) => (e as NodeJS.ErrnoException).code).find((c) => typeof c === 'string' && c !== '')
  const why = code ? connectionWords(code) : chain.at(-1)?.message || 'connection error'
  if (code || /fetch failed|terminated|socket|other side closed|connection|ECONN|network/i.test(text)) {
    return build('connection', `${context.provider} (model ${context.model}): connection to ${displayUrl(context.baseUrl)} failed: ${why}`, context, { cause: err })
  }
  return invalidResponse(context, chain[0]?.message ?? String(err), err)
}

function connectionWords (code: string): string {
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused (ECONNREFUSED): is the server running?'
    case 'ECONNRESET':
      return 'connection reset by the server (ECONNRESET)'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the host name does not resolve (${code})`
    case 'UND_ERR_SOCKET':
      return 'the server closed the connection mid-reply'
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `the host is unreachable (${code})`
    default:
      return code.startsWith('ERR_TLS') || code.includes('CERT') ? `TLS failure (${code})` : code
  }
}

/** The error and its causes, outermost first (at most a few levels). */
function causes (err: unknown): Error[] {
  const chain: Error[] = []
  let current: unknown = err
  while (current instanceof Error && chain.length < 5 && !chain.includes(current)) {
    chain.push(current)
    current = (current as { cause?: unknown }).cause
  }
  return chain
}

function truncate (text: string, max = 500): string {
  return text.length > max ? `${text.slice(0, max)}…` : text
}

/**
 * The ProviderError, with the key removed from its message. The SDK error is kept as the cause only
 * when nothing in it carries the key, so that logging the error cannot print it either.
 */
function build (
  kind: ProviderErrorKind,
  message: string,
  context: CallContext,
  extra: { status?: number | undefined; retryAfterMs?: number | undefined; cause?: unknown }
): ProviderError {
  const cause = extra.cause !== undefined && !mentionsKey(extra.cause, context.apiKey) ? extra.cause : undefined
  return new ProviderError(kind, redact(message, context.apiKey), {
    provider: context.provider,
    status: extra.status,
    retryAfterMs: extra.retryAfterMs,
    cause
  })
}

function mentionsKey (err: unknown, apiKey: string | undefined): boolean {
  if (!apiKey || apiKey.length < 4) return false
  return causes(err).some((e) => `${e.message} ${e.stack ?? ''} ${safeJson(e)}`.includes(apiKey))
}

function safeJson (value: unknown): string {
  try {
    return JSON.stringify(value) ?? ''
  } catch {
    return ''
  }
}

/**
 * Runs the adapter's mapping, except that once the caller's signal has aborted, the caller gets the
 * signal's reason (a TimeoutError or AbortError) unchanged, whatever the SDK made of the abort.
 */
export function failure (err: unknown, context: CallContext, map: (err: unknown) => ProviderError): unknown {
  if (context.signal.aborted) return context.signal.reason
  return map(err)
}
