import { createParser } from 'eventsource-parser'

/** One Server-Sent Event as a browser's EventSource would hand it over. */
export interface SseEvent {
  /** The `event:` field ('message' when the server sent none, as EventSource does). */
  event: string
  id: string | undefined
  /** The raw `data:` text. */
  data: string
}

export interface SseResult {
  status: number
  headers: Headers
  /** The parsed events, in arrival order (for an SSE answer). */
  events: SseEvent[]
  /** The body text when the answer was not an event stream (an error body, usually). */
  text: string
  /** Milliseconds from sending the request to the first `delta` event (undefined: none came). */
  firstDeltaMs: number | undefined
  /** Milliseconds from sending the request to the end of the stream (or the abort). */
  durationMs: number
  /** True when the helper (abortAfter) cut the connection, false when the server ended the stream. */
  aborted: boolean
}

export interface SseOptions {
  headers?: Record<string, string>
  /** Abort the request once this many events arrived, or once the predicate says so. */
  abortAfter?: number | ((event: SseEvent, events: SseEvent[]) => boolean)
  /** Called for each event as it arrives (before abortAfter is checked). */
  onEvent?: (event: SseEvent) => void
  /** Bound on the whole exchange (the test fails with a clear message past it). Default 15 s. */
  timeoutMs?: number
  method?: string
}

/**
 * Sends a request (POST with a JSON body by default) with `Accept: text/event-stream` and reads the
 * answer the way a browser does: a fetch body reader, decoded as a UTF-8 stream, fed to an SSE parser.
 */
export async function sse (url: string, body: unknown, options: SseOptions = {}): Promise<SseResult> {
  const controller = new AbortController()
  const timeoutMs = options.timeoutMs ?? 15_000
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    controller.abort(new Error(`SSE exchange with ${url} took longer than ${timeoutMs} ms`))
  }, timeoutMs)
  const started = performance.now()
  const events: SseEvent[] = []
  let firstDeltaMs: number | undefined
  let aborted = false
  let text = ''
  try {
    const response = await fetch(url, {
      method: options.method ?? 'POST',
      headers: { accept: 'text/event-stream', 'content-type': 'application/json', ...options.headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      signal: controller.signal
    })
    const isStream = (response.headers.get('content-type') ?? '').startsWith('text/event-stream')
    const reader = response.body?.getReader()
    const decoder = new TextDecoder('utf-8', { fatal: true })
    let stop = false
    const parser = createParser({
      onEvent (message) {
        if (stop) return
        const event: SseEvent = { event: message.event ?? 'message', id: message.id, data: message.data }
        events.push(event)
        if (event.event === 'delta' && firstDeltaMs === undefined) firstDeltaMs = performance.now() - started
        options.onEvent?.(event)
        const limit = options.abortAfter
        if (limit !== undefined && (typeof limit === 'number' ? events.length >= limit : limit(event, events))) stop = true
      }
    })
    if (reader) {
      try {
        for (;;) {
          const { done, value } = await reader.read()
          if (done) break
          const chunk = decoder.decode(value, { stream: true })
          if (isStream) parser.feed(chunk)
          else text += chunk
          if (stop) {
            aborted = true
            controller.abort()
            await reader.cancel().catch(() => undefined)
            break
          }
        }
        if (!aborted) {
          const rest = decoder.decode()
          if (isStream) parser.feed(rest)
          else text += rest
        }
      } catch (err) {
        if (timedOut) throw controller.signal.reason
        if (!aborted) throw err
      }
    }
    return { status: response.status, headers: response.headers, events, text, firstDeltaMs, durationMs: performance.now() - started, aborted }
  } catch (err) {
    if (timedOut) throw controller.signal.reason
    throw err
  } finally {
    clearTimeout(timer)
  }
}

/** The JSON data of an event. */
export function data<T = any> (event: SseEvent | undefined): T {
  if (!event) throw new Error('no such event')
  return JSON.parse(event.data) as T
}
