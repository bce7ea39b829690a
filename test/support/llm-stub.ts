/**
 * LlmStub: ONE loopback HTTP server (node:http, 127.0.0.1, random port) that speaks the three LLM wire
 * formats with the JSON and SSE shapes of the real APIs, so that tests drive the real SDKs over real
 * HTTP and never reach the internet.
 *
 *   const stub = await LlmStub.start()
 *   t.teardown(() => stub.close())                       // destroys open sockets: hung requests too
 *   stub.openaiBaseUrl     http://127.0.0.1:PORT/v1      OpenAI SDK baseURL, OPENAI_BASE_URL, an agent's baseUrl
 *   stub.anthropicBaseUrl  http://127.0.0.1:PORT         ANTHROPIC_BASE_URL
 *   stub.geminiBaseUrl     http://127.0.0.1:PORT         GEMINI_BASE_URL
 *   stub.urlFor('agent-a') http://127.0.0.1:PORT/agent-a/v1: any prefix works, so a test can tell which
 *                          base URL a request used (requests[i].prefix === '/agent-a')
 *
 * Routes (any path prefix before them):
 *   OpenAI     POST /v1/chat/completions (stream or not; usage chunk when stream_options.include_usage),
 *              GET /v1/models, GET /v1/models/:id          (OpenAI shapes unless anthropic-version is sent)
 *   Anthropic  POST /v1/messages (stream or not), GET /v1/models, GET /v1/models/:id
 *   Gemini     POST /v1beta/models/:model:streamGenerateContent?alt=sse, POST .../:model:generateContent,
 *              GET /v1beta/models/:model, GET /v1beta/models
 *
 * Scripting: each request takes the first matching script of the queue, else the default.
 *   stub.enqueue({ text: 'Hello there' })                 one reply (a string is split into word deltas)
 *   stub.enqueue({ status: 500 }, { times: 3 })           the next 3 requests fail with a provider-shaped 500
 *   stub.failNext(2, 429, { 'retry-after': '1' })         shorthand for the line above, with headers
 *   stub.enqueue({ hang: true }, { when: (r) => r.kind === 'chat' })   only chat requests take it
 *   stub.setDefault({ text: ['a', 'b'] })  or  stub.setDefault((request) => ({ text: request.model }))
 *   stub.reset()                                          empties the queue, the default and the records
 *   stub.enqueue({ until: gate })                         answers once the test resolves `gate`
 * A script (StubScript below): text, toolCalls, usage, noUsage, delayMs, until, firstTokenDelayMs, deltaDelayMs, status + headers +
 * errorMessage/errorBody, hang, hangAfter, cutAfter, endAfter, streamError, models, raw.
 *
 * Tool calls: stub.enqueue({ text: 'Let me look.', toolCalls: [{ name: 'add', arguments: { a: 1 } }, { name: 'now', arguments: '{"broken' }] })
 * answers (after the text, if any) with the calls in each wire format, streamed and whole, with the
 * provider's finish reason: OpenAI tool_calls (streamed by index, the arguments in 2+ fragments),
 * Anthropic tool_use blocks (streamed as input_json_delta pieces), Gemini functionCall parts (no id
 * unless the script gives one). A string `arguments` is sent as it is (to test broken JSON).
 *
 * Recording: stub.requests (every request, in arrival order: protocol, kind, path, headers, parsed body,
 * and normalised apiKey, model, system, messages, tools, temperature, maxTokens, stream); stub.chatRequests();
 * `tools` is what was offered, as { name, description, inputSchema } whatever the format (undefined when
 * the body has no tools field); each message has its text as `content` and, in a tool exchange,
 * `toolCalls` ({ id, name, arguments }) or `toolResults` ({ callId, name, content, isError }: OpenAI
 * role tool has one, an Anthropic or Gemini user turn has every result it carries);
 * stub.inFlight (responses not finished); await stub.idle() (no response in flight, e.g. after an abort);
 * await stub.waitForRequests(n).
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { freeLoopbackPort } from '../../src/db/embedded-postgres.js'
import { EchoProvider } from '../../src/providers/echo.js'

export type StubProtocol = 'openai' | 'anthropic' | 'gemini'
export type StubKind = 'chat' | 'models' | 'model'

export interface StubScript {
  /** The reply: a string is split into word deltas (each with its leading space), an array is the deltas. Default: `Stub reply from <model>` (none when toolCalls are given). */
  text?: string | string[]
  /** Tool calls the model asks for, after the text: arguments an object, or a string sent as it is. */
  toolCalls?: StubToolCall[]
  /** Default: input = words of the system prompt and messages, output = words of the reply. */
  usage?: { inputTokens: number; outputTokens: number }
  /** Before anything is sent (headers included). */
  delayMs?: number
  /** Before anything is sent: wait until this settles (the test releases the answer when it wants). */
  until?: Promise<unknown>
  /** After the headers of a stream, before the first delta (added to delayMs for a JSON answer). */
  firstTokenDelayMs?: number
  deltaDelayMs?: number
  /** Answer with this HTTP status and a provider-shaped error body (429, 500, 529...). */
  status?: number
  /** Extra response headers (with `status`: retry-after, retry-after-ms...). */
  headers?: Record<string, string>
  errorMessage?: string
  /** Replaces the provider-shaped error body entirely (e.g. Google's RetryInfo details). */
  errorBody?: unknown
  /** Never answer: the request stays open until the client goes away or the stub closes. */
  hang?: boolean
  /** Stream this many deltas, then stop sending (the connection stays open). */
  hangAfter?: number
  /** Stream this many deltas, then destroy the socket (a connection cut mid-reply). */
  cutAfter?: number
  /** Stream this many deltas, then end the response cleanly without the end marker ([DONE], message_stop, finishReason). */
  endAfter?: number
  /** Stream `after` deltas, then the provider's in-stream error event (HTTP status stays 200). */
  streamError?: { after: number; status?: number; message?: string }
  /** Answer exactly this instead of the provider's format (a proxy's HTML page, a broken body...). */
  raw?: { status?: number; contentType?: string; body: string }
  /** OpenAI format: no usage chunk even when stream_options.include_usage asks (servers that ignore it). */
  noUsage?: boolean
  /** The model ids the model endpoints know (default: any id asked for exists; the list is [model]). */
  models?: string[]
}

export interface StubToolCall {
  /** Default: call_stub_<n> (OpenAI), toolu_stub_<n> (Anthropic), none (Gemini). */
  id?: string
  name: string
  arguments: unknown
}

export interface StubTool {
  name: string
  description: string | undefined
  inputSchema: unknown
}

/** A message as the request sent it, normalised across the wire formats. */
export interface StubMessage {
  role: string
  /** The text parts, joined. */
  content: string
  /** Calls the (assistant or model) turn asked for; arguments parsed when they are JSON text. */
  toolCalls?: { id: string | undefined; name: string; arguments: unknown }[]
  /** Results the turn carries (OpenAI role tool, Anthropic tool_result blocks, Gemini functionResponse parts). */
  toolResults?: { callId: string | undefined; name: string | undefined; content: string; isError: boolean }[]
}

export type StubHandler = StubScript | ((request: StubRequest) => StubScript)

export interface StubRequest {
  protocol: StubProtocol
  kind: StubKind
  method: string
  /** The path without the query string. */
  path: string
  /** What came before the route (/v1, /v1beta): '' for the stub's own base URLs, '/agent-a' for urlFor('agent-a'). */
  prefix: string
  query: Record<string, string>
  headers: IncomingHttpHeaders
  /** The parsed JSON body (undefined for GET). */
  body: unknown
  /** From Authorization: Bearer (OpenAI), x-api-key (Anthropic) or x-goog-api-key / ?key= (Gemini). */
  apiKey: string | undefined
  model: string | undefined
  stream: boolean
  system: string | undefined
  messages: StubMessage[]
  /** The tools offered (undefined: the body has no tools field). */
  tools: StubTool[] | undefined
  temperature: number | undefined
  maxTokens: number | undefined
  receivedAt: number
}

interface Queued {
  handler: StubHandler
  times: number
  when: ((request: StubRequest) => boolean) | undefined
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 422: 'Unprocessable Entity', 429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout', 529: 'Overloaded' }

export class LlmStub {
  readonly requests: StubRequest[] = []
  private readonly queue: Queued[] = []
  private fallback: StubHandler = {}
  private readonly sockets = new Set<Socket>()
  private readonly active = new Set<ServerResponse>()
  private readonly closing = new AbortController()
  private idleWaiters: (() => void)[] = []

  private constructor (private readonly server: Server, readonly port: number) {}

  static async start (): Promise<LlmStub> {
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    const address = server.address()
    const stub = new LlmStub(server, typeof address === 'object' && address ? address.port : 0)
    server.on('connection', (socket) => {
      stub.sockets.add(socket)
      socket.on('close', () => stub.sockets.delete(socket))
    })
    server.on('request', (req, res) => { void stub.handle(req, res) })
    return stub
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  get openaiBaseUrl (): string {
    return `${this.url}/v1`
  }

  get anthropicBaseUrl (): string {
    return this.url
  }

  get geminiBaseUrl (): string {
    return this.url
  }

  /** An OpenAI-style base URL under a prefix of its own: requests through it record `prefix: '/<name>'`. */
  urlFor (name: string): string {
    return `${this.url}/${name}/v1`
  }

  /** Responses started and not yet finished or closed. */
  get inFlight (): number {
    return this.active.size
  }

  enqueue (handler: StubHandler, options: { times?: number; when?: (request: StubRequest) => boolean } = {}): this {
    this.queue.push({ handler, times: options.times ?? 1, when: options.when })
    return this
  }

  /** The next `count` requests answer `status` with a provider-shaped error body and these headers. */
  failNext (count: number, status: number, headers: Record<string, string> = {}): this {
    return this.enqueue({ status, headers }, { times: count })
  }

  setDefault (handler: StubHandler): this {
    this.fallback = handler
    return this
  }

  reset (): void {
    this.queue.length = 0
    this.fallback = {}
    this.requests.length = 0
  }

  chatRequests (): StubRequest[] {
    return this.requests.filter((request) => request.kind === 'chat')
  }

  /** Resolves once no response is in flight (a client that aborted has closed its connection). */
  idle (timeoutMs = 2000): Promise<void> {
    if (this.active.size === 0) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`stub: ${this.active.size} response(s) still in flight after ${timeoutMs} ms`)), timeoutMs)
      this.idleWaiters.push(() => {
        clearTimeout(timer)
        resolve()
      })
    })
  }

  async waitForRequests (count: number, timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (this.requests.length < count) {
      if (Date.now() > deadline) throw new Error(`stub: ${this.requests.length} request(s) after ${timeoutMs} ms, expected ${count}`)
      await sleep(5)
    }
  }

  async close (): Promise<void> {
    this.closing.abort()
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    for (const socket of this.sockets) socket.destroy()
    await closed
  }

  private nextScript (request: StubRequest): StubScript {
    const index = this.queue.findIndex((entry) => entry.when === undefined || entry.when(request))
    let handler = this.fallback
    if (index >= 0) {
      const entry = this.queue[index]!
      handler = entry.handler
      if (--entry.times <= 0) this.queue.splice(index, 1)
    }
    return typeof handler === 'function' ? handler(request) : handler
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.active.add(res)
    const done = new AbortController()
    res.on('close', () => {
      done.abort()
      this.active.delete(res)
      if (this.active.size === 0) {
        const waiters = this.idleWaiters
        this.idleWaiters = []
        for (const wake of waiters) wake()
      }
    })
    const signal = AbortSignal.any([done.signal, this.closing.signal])
    try {
      const raw = await readBody(req)
      const request = parseRequest(req, raw)
      if (!request) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: `stub: no route for ${req.method} ${req.url}` } }))
        return
      }
      this.requests.push(request)
      const script = this.nextScript(request)
      if (script.hang) return // stays open until the client or close() ends it
      if (script.until) await released(script.until, signal)
      await pause(script.delayMs, signal)
      if (script.raw) {
        res.writeHead(script.raw.status ?? 200, { 'content-type': script.raw.contentType ?? 'text/plain', ...script.headers }).end(script.raw.body)
        return
      }
      if (script.status !== undefined && script.status >= 400) {
        sendError(res, request.protocol, script.status, script)
        return
      }
      if (request.kind !== 'chat') {
        sendModel(res, request, script)
        return
      }
      const reply = replyOf(request, script)
      if (request.stream) await streamReply(res, request, script, reply, signal)
      else {
        await pause(script.firstTokenDelayMs, signal)
        sendJsonReply(res, request, reply)
      }
    } catch (err) {
      if (signal.aborted) return
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: `stub: ${(err as Error).message}` } }))
      else res.destroy()
    }
  }
}

/** A loopback URL where nothing listens (connection refused), OpenAI-style with /v1. */
export async function refusedUrl (): Promise<string> {
  return `http://127.0.0.1:${await freeLoopbackPort()}/v1`
}

interface Reply {
  model: string
  deltas: string[]
  toolCalls: ReplyToolCall[]
  usage: { inputTokens: number; outputTokens: number }
}

interface ReplyToolCall {
  /** undefined: Gemini's calls have no id unless the script gives one. */
  id: string | undefined
  name: string
  /** The arguments as JSON text (OpenAI, Anthropic's stream). */
  json: string
  /** The arguments as a value (Anthropic's whole input, Gemini's args): parsed, or the text itself when it is not JSON. */
  value: unknown
}

function replyOf (request: StubRequest, script: StubScript): Reply {
  const model = request.model ?? 'stub-model'
  const text = script.text ?? (script.toolCalls ? [] : `Stub reply from ${model}`)
  const deltas = typeof text === 'string' ? EchoProvider.split(text) : text
  const toolCalls = (script.toolCalls ?? []).map((call, i): ReplyToolCall => {
    const json = typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments ?? {})
    const id = call.id ?? (request.protocol === 'openai' ? `call_stub_${i + 1}` : request.protocol === 'anthropic' ? `toolu_stub_${i + 1}` : undefined)
    return { id, name: call.name, json, value: parsedOrText(json) }
  })
  const inputWords = [request.system ?? '', ...request.messages.map((m) => m.content)].reduce((sum, part) => sum + EchoProvider.countWords(part), 0)
  return { model, deltas, toolCalls, usage: script.usage ?? { inputTokens: inputWords, outputTokens: EchoProvider.countWords(deltas.join('')) } }
}

/** JSON text in 2 or 3 fragments (1 when shorter than 2 characters), so that clients must assemble it. */
function fragments (json: string): string[] {
  if (json.length < 2) return [json]
  const size = Math.ceil(json.length / 3)
  const pieces: string[] = []
  for (let i = 0; i < json.length; i += size) pieces.push(json.slice(i, i + size))
  return pieces
}

async function pause (ms: number | undefined, signal: AbortSignal): Promise<void> {
  if (ms && ms > 0) await sleep(ms, undefined, { signal })
}

/** Waits for `gate`, or rejects when the client goes away or the stub closes. */
function released (gate: Promise<unknown>, signal: AbortSignal): Promise<unknown> {
  return Promise.race([
    gate,
    new Promise((_resolve, reject) => {
      if (signal.aborted) reject(signal.reason)
      else signal.addEventListener('abort', () => reject(signal.reason), { once: true })
    })
  ])
}

function readBody (req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = ''
    req.setEncoding('utf8')
    req.on('data', (chunk: string) => (text += chunk))
    req.on('end', () => resolve(text))
    req.on('error', reject)
  })
}

const OPENAI_CHAT = /^(.*)\/chat\/completions$/
const MODELS = /^(.*)\/v1\/models(?:\/(.+))?$/
const ANTHROPIC_MESSAGES = /^(.*)\/v1\/messages$/
const GEMINI_GENERATE = /^(.*)\/v1beta\/models\/([^/:]+):(streamGenerateContent|generateContent)$/
const GEMINI_MODELS = /^(.*)\/v1beta\/models(?:\/([^/:]+))?$/

function parseRequest (req: IncomingMessage, raw: string): StubRequest | undefined {
  const url = new URL(req.url ?? '/', 'http://stub')
  const path = url.pathname
  const method = req.method ?? 'GET'
  const headers = req.headers
  const body: unknown = raw === '' ? undefined : JSON.parse(raw)
  const b = (body ?? {}) as Record<string, unknown>
  const base = { method, path, query: Object.fromEntries(url.searchParams), headers, body, receivedAt: Date.now() }
  const bearer = /^Bearer (.*)$/.exec(String(headers.authorization ?? ''))?.[1]
  let match: RegExpExecArray | null

  if (method === 'POST' && (match = GEMINI_GENERATE.exec(path))) {
    const config = (b.generationConfig ?? {}) as Record<string, unknown>
    const system = b.systemInstruction as { parts?: { text?: string }[] } | undefined
    return {
      ...base,
      protocol: 'gemini',
      kind: 'chat',
      prefix: match[1]!,
      model: decodeURIComponent(match[2]!),
      apiKey: String(headers['x-goog-api-key'] ?? url.searchParams.get('key') ?? '') || undefined,
      stream: match[3] === 'streamGenerateContent',
      system: system?.parts?.map((p) => p.text ?? '').join(''),
      messages: geminiMessages(b.contents),
      tools: geminiTools(b.tools),
      temperature: config.temperature as number | undefined,
      maxTokens: config.maxOutputTokens as number | undefined
    }
  }
  if (method === 'GET' && (match = GEMINI_MODELS.exec(path))) {
    return {
      ...base,
      protocol: 'gemini',
      kind: match[2] ? 'model' : 'models',
      prefix: match[1]!,
      model: match[2] && decodeURIComponent(match[2]),
      apiKey: String(headers['x-goog-api-key'] ?? url.searchParams.get('key') ?? '') || undefined,
      stream: false,
      system: undefined,
      messages: [],
      tools: undefined,
      temperature: undefined,
      maxTokens: undefined
    }
  }
  if (method === 'POST' && (match = ANTHROPIC_MESSAGES.exec(path))) {
    const system = typeof b.system === 'string' ? b.system : Array.isArray(b.system) ? (b.system as { text?: string }[]).map((p) => p.text ?? '').join('') : undefined
    return {
      ...base,
      protocol: 'anthropic',
      kind: 'chat',
      prefix: match[1]!,
      model: b.model as string | undefined,
      apiKey: (headers['x-api-key'] as string | undefined) ?? bearer,
      stream: b.stream === true,
      system,
      messages: anthropicMessages(b.messages),
      tools: b.tools === undefined ? undefined : (b.tools as { name: string; description?: string; input_schema?: unknown }[]).map((tool) => ({ name: tool.name, description: tool.description, inputSchema: tool.input_schema })),
      temperature: b.temperature as number | undefined,
      maxTokens: b.max_tokens as number | undefined
    }
  }
  if (method === 'GET' && (match = MODELS.exec(path))) {
    const protocol: StubProtocol = headers['anthropic-version'] ? 'anthropic' : 'openai'
    return {
      ...base,
      protocol,
      kind: match[2] ? 'model' : 'models',
      prefix: match[1]!,
      model: match[2] && decodeURIComponent(match[2]),
      apiKey: protocol === 'anthropic' ? (headers['x-api-key'] as string | undefined) : bearer,
      stream: false,
      system: undefined,
      messages: [],
      tools: undefined,
      temperature: undefined,
      maxTokens: undefined
    }
  }
  if (method === 'POST' && (match = OPENAI_CHAT.exec(path))) {
    const all = openAiMessages(b.messages)
    const system = all.filter((m) => m.role === 'system' || m.role === 'developer').map((m) => m.content).join('\n\n')
    return {
      ...base,
      protocol: 'openai',
      kind: 'chat',
      prefix: match[1]!.replace(/\/v1$/, ''),
      model: b.model as string | undefined,
      apiKey: bearer,
      stream: b.stream === true,
      system: system === '' ? undefined : system,
      messages: all.filter((m) => m.role !== 'system' && m.role !== 'developer'),
      tools: b.tools === undefined ? undefined : (b.tools as { function: { name: string; description?: string; parameters?: unknown } }[]).map((tool) => ({ name: tool.function.name, description: tool.function.description, inputSchema: tool.function.parameters })),
      temperature: b.temperature as number | undefined,
      maxTokens: (b.max_completion_tokens ?? b.max_tokens) as number | undefined
    }
  }
  return undefined
}

/** JSON text parsed, or the text itself when it is not JSON (broken arguments stay visible). */
function parsedOrText (text: unknown): unknown {
  if (typeof text !== 'string') return text
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

/** Text of a content that is a string or an array of parts with `text`. */
function textOf (content: unknown): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return ''
  return content.map((part: { type?: string; text?: string }) => (part.type === undefined || part.type === 'text' ? part.text ?? '' : '')).join('')
}

interface OpenAiWireMessage {
  role?: string
  content?: unknown
  tool_calls?: { id?: string; function?: { name?: string; arguments?: string } }[]
  tool_call_id?: string
}

function openAiMessages (value: unknown): StubMessage[] {
  if (!Array.isArray(value)) return []
  return value.map((m: OpenAiWireMessage) => {
    const message: StubMessage = { role: m.role ?? '', content: textOf(m.content) }
    if (m.tool_calls) message.toolCalls = m.tool_calls.map((call) => ({ id: call.id, name: call.function?.name ?? '', arguments: parsedOrText(call.function?.arguments) }))
    if (m.role === 'tool') message.toolResults = [{ callId: m.tool_call_id, name: undefined, content: textOf(m.content), isError: false }]
    return message
  })
}

interface AnthropicBlock {
  type?: string
  text?: string
  id?: string
  name?: string
  input?: unknown
  tool_use_id?: string
  content?: unknown
  is_error?: boolean
}

function anthropicMessages (value: unknown): StubMessage[] {
  if (!Array.isArray(value)) return []
  return value.map((m: { role?: string; content?: unknown }) => {
    const message: StubMessage = { role: m.role ?? '', content: textOf(m.content) }
    if (!Array.isArray(m.content)) return message
    const blocks = m.content as AnthropicBlock[]
    const calls = blocks.filter((block) => block.type === 'tool_use')
    const results = blocks.filter((block) => block.type === 'tool_result')
    if (calls.length > 0) message.toolCalls = calls.map((block) => ({ id: block.id, name: block.name ?? '', arguments: block.input }))
    if (results.length > 0) message.toolResults = results.map((block) => ({ callId: block.tool_use_id, name: undefined, content: textOf(block.content), isError: block.is_error === true }))
    return message
  })
}

interface GeminiPart {
  text?: string
  functionCall?: { id?: string; name?: string; args?: unknown }
  functionResponse?: { id?: string; name?: string; response?: { result?: unknown; error?: unknown } }
}

function geminiMessages (value: unknown): StubMessage[] {
  if (!Array.isArray(value)) return []
  return value.map((c: { role?: string; parts?: GeminiPart[] }) => {
    const parts = c.parts ?? []
    const message: StubMessage = { role: c.role ?? 'user', content: parts.map((p) => p.text ?? '').join('') }
    const calls = parts.flatMap((p) => (p.functionCall ? [p.functionCall] : []))
    const results = parts.flatMap((p) => (p.functionResponse ? [p.functionResponse] : []))
    if (calls.length > 0) message.toolCalls = calls.map((call) => ({ id: call.id, name: call.name ?? '', arguments: call.args }))
    if (results.length > 0) {
      message.toolResults = results.map((result) => {
        const isError = result.response !== undefined && 'error' in result.response
        const content = isError ? result.response!.error : result.response?.result
        return { callId: result.id, name: result.name, content: typeof content === 'string' ? content : JSON.stringify(content), isError }
      })
    }
    return message
  })
}

function geminiTools (value: unknown): StubTool[] | undefined {
  if (!Array.isArray(value)) return undefined
  return (value as { functionDeclarations?: { name: string; description?: string; parametersJsonSchema?: unknown; parameters?: unknown }[] }[]).flatMap((tool) =>
    (tool.functionDeclarations ?? []).map((declaration) => ({ name: declaration.name, description: declaration.description, inputSchema: declaration.parametersJsonSchema ?? declaration.parameters })))
}

// --- Errors -------------------------------------------------------------------------------------

const ANTHROPIC_TYPES: Record<number, string> = { 400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error', 500: 'api_error', 529: 'overloaded_error' }
const GOOGLE_STATUS: Record<number, string> = { 400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 409: 'ABORTED', 429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED' }
const OPENAI_TYPES: Record<number, [string, string | null]> = { 400: ['invalid_request_error', null], 401: ['invalid_request_error', 'invalid_api_key'], 403: ['invalid_request_error', 'unsupported_country_region_territory'], 404: ['invalid_request_error', 'model_not_found'], 429: ['requests', 'rate_limit_exceeded'] }

function errorBody (protocol: StubProtocol, status: number, message: string): unknown {
  switch (protocol) {
    case 'openai': {
      const [type, code] = OPENAI_TYPES[status] ?? ['server_error', null]
      return { error: { message, type, param: null, code } }
    }
    case 'anthropic':
      return { type: 'error', error: { type: ANTHROPIC_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error'), message }, request_id: 'req_stub' }
    case 'gemini':
      return { error: { code: status, message, status: GOOGLE_STATUS[status] ?? (status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT') } }
  }
}

function defaultErrorMessage (status: number): string {
  if (status === 401) return 'Invalid API key'
  if (status === 429) return 'Rate limit reached, please retry later'
  if (status === 529) return 'Overloaded'
  return `stub error ${status}`
}

function sendError (res: ServerResponse, protocol: StubProtocol, status: number, script: StubScript): void {
  const body = script.errorBody ?? errorBody(protocol, status, script.errorMessage ?? defaultErrorMessage(status))
  res.writeHead(status, STATUS_TEXT[status] ?? 'Error', { 'content-type': 'application/json; charset=utf-8', ...(protocol === 'anthropic' ? { 'request-id': 'req_stub' } : {}), ...script.headers })
  res.end(JSON.stringify(body))
}

// --- Models -------------------------------------------------------------------------------------

function sendModel (res: ServerResponse, request: StubRequest, script: StubScript): void {
  const known = script.models ?? (request.model ? [request.model] : ['stub-model'])
  if (request.kind === 'model' && script.models && !script.models.includes(request.model!)) {
    sendError(res, request.protocol, 404, { errorMessage: `The model '${request.model}' does not exist` })
    return
  }
  const describe = (id: string): unknown => {
    switch (request.protocol) {
      case 'openai':
        return { id, object: 'model', created: 1_700_000_000, owned_by: 'stub' }
      case 'anthropic':
        return { type: 'model', id, display_name: id, created_at: '2025-01-01T00:00:00Z' }
      case 'gemini':
        return { name: `models/${id}`, version: '001', displayName: id, inputTokenLimit: 1_048_576, outputTokenLimit: 8192, supportedGenerationMethods: ['generateContent', 'countTokens'] }
    }
  }
  let body: unknown
  if (request.kind === 'model') body = describe(request.model!)
  else if (request.protocol === 'openai') body = { object: 'list', data: known.map(describe) }
  else if (request.protocol === 'anthropic') body = { data: known.map(describe), has_more: false, first_id: known[0] ?? null, last_id: known.at(-1) ?? null }
  else body = { models: known.map(describe) }
  sendJson(res, body, script.headers)
}

function sendJson (res: ServerResponse, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(JSON.stringify(body))
}

// --- Replies ------------------------------------------------------------------------------------

function sendJsonReply (res: ServerResponse, request: StubRequest, reply: Reply): void {
  const text = reply.deltas.join('')
  const { inputTokens, outputTokens } = reply.usage
  switch (request.protocol) {
    case 'openai':
      return sendJson(res, {
        id: 'chatcmpl-stub',
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: reply.model,
        system_fingerprint: 'fp_stub',
        choices: [{ index: 0, message: openAiAnswer(text, reply.toolCalls), logprobs: null, finish_reason: reply.toolCalls.length > 0 ? 'tool_calls' : 'stop' }],
        usage: { prompt_tokens: inputTokens, completion_tokens: outputTokens, total_tokens: inputTokens + outputTokens }
      })
    case 'anthropic':
      return sendJson(res, {
        id: 'msg_stub',
        type: 'message',
        role: 'assistant',
        model: reply.model,
        content: [
          ...(text !== '' || reply.toolCalls.length === 0 ? [{ type: 'text', text }] : []),
          ...reply.toolCalls.map((call) => ({ type: 'tool_use', id: call.id, name: call.name, input: call.value }))
        ],
        stop_reason: reply.toolCalls.length > 0 ? 'tool_use' : 'end_turn',
        stop_sequence: null,
        usage: { input_tokens: inputTokens, output_tokens: outputTokens }
      })
    case 'gemini':
      return sendJson(res, {
        candidates: [{ content: { parts: [...(text !== '' || reply.toolCalls.length === 0 ? [{ text }] : []), ...reply.toolCalls.map(geminiCallPart)], role: 'model' }, finishReason: 'STOP', index: 0 }],
        usageMetadata: { promptTokenCount: inputTokens, candidatesTokenCount: outputTokens, totalTokenCount: inputTokens + outputTokens },
        modelVersion: reply.model,
        responseId: 'stub'
      })
  }
}

function openAiAnswer (text: string, calls: ReplyToolCall[]): unknown {
  if (calls.length === 0) return { role: 'assistant', content: text, refusal: null }
  return {
    role: 'assistant',
    content: text === '' ? null : text,
    refusal: null,
    tool_calls: calls.map((call) => ({ id: call.id, type: 'function', function: { name: call.name, arguments: call.json } }))
  }
}

function geminiCallPart (call: ReplyToolCall): unknown {
  return { functionCall: { ...(call.id === undefined ? {} : { id: call.id }), name: call.name, args: call.value } }
}

/** One wire format's stream: the events around and between the deltas. */
interface StreamFormat {
  start(): string
  delta(text: string): string
  end(): string
  error(status: number, message: string): string
}

function formatFor (request: StubRequest, reply: Reply, script: StubScript): StreamFormat {
  const { inputTokens, outputTokens } = reply.usage
  switch (request.protocol) {
    case 'openai': {
      const includeUsage = (request.body as { stream_options?: { include_usage?: boolean } }).stream_options?.include_usage === true && !script.noUsage
      const created = Math.floor(Date.now() / 1000)
      const chunk = (choices: unknown[], usage?: unknown) =>
        `data: ${JSON.stringify({ id: 'chatcmpl-stub', object: 'chat.completion.chunk', created, model: reply.model, system_fingerprint: 'fp_stub', choices, ...(includeUsage ? { usage: usage ?? null } : {}) })}\n\n`
      return {
        start: () => chunk([{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]),
        delta: (text) => chunk([{ index: 0, delta: { content: text }, logprobs: null, finish_reason: null }]),
        end: () =>
          reply.toolCalls.map((call, index) =>
            chunk([{ index: 0, delta: { tool_calls: [{ index, id: call.id, type: 'function', function: { name: call.name, arguments: '' } }] }, logprobs: null, finish_reason: null }]) +
            fragments(call.json).map((piece) => chunk([{ index: 0, delta: { tool_calls: [{ index, function: { arguments: piece } }] }, logprobs: null, finish_reason: null }])).join('')
          ).join('') +
          chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: reply.toolCalls.length > 0 ? 'tool_calls' : 'stop' }]) +
          (includeUsage ? chunk([], { prompt_tokens: inputTokens, completion_tokens: outputTokens, total_tokens: inputTokens + outputTokens }) : '') +
          'data: [DONE]\n\n',
        error: (status, message) => `data: ${JSON.stringify(errorBody('openai', status, message))}\n\n`
      }
    }
    case 'anthropic': {
      const event = (type: string, data: unknown) => `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`
      // Like the API, no text block when the answer is only tool calls.
      const textBlock = reply.deltas.length > 0 || reply.toolCalls.length === 0
      const first = textBlock ? 1 : 0
      return {
        start: () =>
          event('message_start', {
            type: 'message_start',
            message: { id: 'msg_stub', type: 'message', role: 'assistant', model: reply.model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: inputTokens, output_tokens: 1 } }
          }) +
          (textBlock ? event('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }) : '') +
          event('ping', { type: 'ping' }),
        delta: (text) => event('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text } }),
        end: () =>
          (textBlock ? event('content_block_stop', { type: 'content_block_stop', index: 0 }) : '') +
          reply.toolCalls.map((call, i) =>
            event('content_block_start', { type: 'content_block_start', index: first + i, content_block: { type: 'tool_use', id: call.id, name: call.name, input: {} } }) +
            fragments(call.json).map((piece) => event('content_block_delta', { type: 'content_block_delta', index: first + i, delta: { type: 'input_json_delta', partial_json: piece } })).join('') +
            event('content_block_stop', { type: 'content_block_stop', index: first + i })
          ).join('') +
          event('message_delta', { type: 'message_delta', delta: { stop_reason: reply.toolCalls.length > 0 ? 'tool_use' : 'end_turn', stop_sequence: null }, usage: { output_tokens: outputTokens } }) +
          event('message_stop', { type: 'message_stop' }),
        error: (status, message) => event('error', errorBody('anthropic', status, message))
      }
    }
    case 'gemini': {
      const chunk = (candidate: Record<string, unknown>, usage: Record<string, number>) =>
        `data: ${JSON.stringify({ candidates: [{ ...candidate, index: 0 }], usageMetadata: usage, modelVersion: reply.model, responseId: 'stub' })}\r\n\r\n`
      return {
        start: () => '',
        delta: (text) => chunk({ content: { parts: [{ text }], role: 'model' } }, { promptTokenCount: inputTokens, totalTokenCount: inputTokens }),
        end: () =>
          reply.toolCalls.map((call) => chunk({ content: { parts: [geminiCallPart(call)], role: 'model' } }, { promptTokenCount: inputTokens, totalTokenCount: inputTokens })).join('') +
          chunk({ content: { parts: [{ text: '' }], role: 'model' }, finishReason: 'STOP' }, { promptTokenCount: inputTokens, candidatesTokenCount: outputTokens, totalTokenCount: inputTokens + outputTokens }),
        error: (status, message) => `data: ${JSON.stringify(errorBody('gemini', status, message))}\r\n\r\n`
      }
    }
  }
}

async function streamReply (res: ServerResponse, request: StubRequest, script: StubScript, reply: Reply, signal: AbortSignal): Promise<void> {
  const format = formatFor(request, reply, script)
  const contentType = request.protocol === 'gemini' ? 'text/event-stream' : 'text/event-stream; charset=utf-8'
  res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-cache', ...script.headers })
  res.flushHeaders()
  const start = format.start()
  if (start) await write(res, start)
  await pause(script.firstTokenDelayMs, signal)
  for (let i = 0; i <= reply.deltas.length; i++) {
    if (i > 0 && i < reply.deltas.length) await pause(script.deltaDelayMs, signal)
    if (i === script.cutAfter) {
      // Let the client read what was sent: a cut must not also swallow the deltas before it.
      await pause(25, signal)
      res.socket?.destroy()
      return
    }
    if (i === script.endAfter) {
      res.end()
      return
    }
    if (i === script.hangAfter) return
    if (script.streamError && i === script.streamError.after) {
      res.end(format.error(script.streamError.status ?? 500, script.streamError.message ?? 'The server had an error while processing your request'))
      return
    }
    if (i < reply.deltas.length) await write(res, format.delta(reply.deltas[i]!))
  }
  res.end(format.end())
}

/** Writes and waits until the bytes are handed to the socket (back-pressure, and a cut after them is clean). */
function write (res: ServerResponse, data: string): Promise<void> {
  return new Promise((resolve, reject) => res.write(data, (err) => (err ? reject(err) : resolve())))
}
