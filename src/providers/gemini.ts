import { GoogleGenAI, type Content, type GenerateContentConfig, type GenerateContentResponse, type Part, type Tool } from '@google/genai'
import { alternatingTurns, callController, singleCall, toolCallFromValue, type AlternatingTurn } from './call.js'
import { providerFetch } from './http.js'
import { failure, fromHttpFailure, fromStreamError, fromTransportError, invalidResponse, streamEndedEarly, type CallContext } from './errors.js'
import type { ChatChunk, ChatRequest, ProbeRequest, Provider, ProviderError, ToolCallRequest, ToolDefinition } from './provider.js'

export { GEMINI_DEFAULT_BASE_URL } from './call.js'

export interface GeminiClientOptions {
  apiKey: string
  baseUrl: string
}

/**
 * A provider's HTTP error answer, thrown by the client's fetch: unlike the SDK's own ApiError it keeps
 * the response headers (Retry-After) beside the status and the body.
 */
class GeminiHttpError extends Error {
  override readonly name = 'GeminiHttpError'
  constructor (readonly status: number, readonly headers: Headers, readonly body: unknown, readonly text: string) {
    super(`HTTP ${status}`)
  }
}

/** fetch, except that an error answer is thrown as a GeminiHttpError with its headers and body. */
async function fetchKeepingErrors (input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
  const response = await providerFetch(input, init)
  if (response.ok) return response
  const text = await response.text()
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    body = undefined
  }
  throw new GeminiHttpError(response.status, response.headers, body, text)
}

/**
 * A @google/genai client for the Gemini API (never Vertex AI) that never retries: `retryOptions.attempts`
 * 1 is the first call only, no SDK timeout (the caller's signal bounds every call), and the base URL
 * is always given so the SDK reads nothing from the environment.
 */
export function createGeminiClient (options: GeminiClientOptions): GoogleGenAI {
  return new GoogleGenAI({
    vertexai: false,
    apiKey: options.apiKey,
    httpOptions: { baseUrl: options.baseUrl, retryOptions: { attempts: 1 }, fetch: fetchKeepingErrors }
  })
}

export interface GeminiProviderOptions {
  client: GoogleGenAI
  baseUrl: string
  apiKey: string | undefined
}

/**
 * Gemini ends an answer whose function call it could not form with this finishReason and no parts:
 * an empty reply is not an answer, so it is a failure (a fallback agent may answer it).
 */
const MALFORMED_CALL = 'MALFORMED_FUNCTION_CALL'
const MALFORMED_CALL_TEXT = 'finishReason MALFORMED_FUNCTION_CALL (the model could not form its tool call)'

/**
 * Gemini through Google's official `@google/genai` SDK: models.generateContentStream (SSE), text from
 * the candidate's parts, tool calls from its functionCall parts, usage from usageMetadata, a
 * finishReason as the end of the reply. The SDK's
 * automatic continuation (it reopens a broken stream by itself) is off: that would be a retry.
 */
export class GeminiProvider implements Provider {
  readonly name = 'gemini'
  private readonly client: GoogleGenAI
  private readonly baseUrl: string
  private readonly apiKey: string | undefined

  constructor (options: GeminiProviderOptions) {
    this.client = options.client
    this.baseUrl = options.baseUrl
    this.apiKey = options.apiKey
  }

  async * stream (request: ChatRequest): AsyncGenerator<ChatChunk> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    const { system, turns } = alternatingTurns(request.systemPrompt, request.messages)
    const contents = turns.map(geminiContent)

    const config: GenerateContentConfig = {
      temperature: request.temperature,
      maxOutputTokens: request.maxTokens,
      ...(system === '' ? {} : { systemInstruction: system }),
      ...geminiTools(request.tools),
      automaticContinuation: false
    }
    if (request.stream === false) {
      yield * this.whole(request, contents, config, context)
      return
    }
    const call = callController(request.signal)
    let events = 0
    let finished = false
    let usage: ChatChunk | undefined
    let read = false
    const calls: ToolCallRequest[] = []
    let malformed = false
    try {
      const stream = await this.client.models.generateContentStream({ model: request.model, contents, config: { ...config, abortSignal: call.signal } })
      for await (const chunk of stream) {
        events++
        const candidate = chunk.candidates?.[0]
        const text = textOf(chunk)
        if (text !== '') yield { type: 'delta', text }
        addCalls(calls, chunk)
        if (candidate?.finishReason) finished = true
        if (candidate?.finishReason === MALFORMED_CALL) malformed = true
        if (chunk.usageMetadata) usage = usageOf(chunk)
      }
      read = true
    } catch (err) {
      throw failure(err, context, (e) => this.toProviderError(e, context))
    } finally {
      call.release(read)
    }
    if (request.signal.aborted) throw request.signal.reason
    if (!finished) throw events === 0 ? invalidResponse(context, 'an empty event stream') : streamEndedEarly(context, 'a finishReason')
    if (malformed) throw invalidResponse(context, MALFORMED_CALL_TEXT)
    if (calls.length > 0) yield { type: 'tool_calls', calls }
    if (usage) yield usage
  }

  /** The answer in one response (`stream: false`, generateContent): its text as one delta, its calls, then its usage. */
  private async * whole (request: ChatRequest, contents: Content[], config: GenerateContentConfig, context: CallContext): AsyncGenerator<ChatChunk> {
    const response: GenerateContentResponse = await singleCall(
      request.signal,
      (signal) => this.client.models.generateContent({ model: request.model, contents, config: { ...config, abortSignal: signal } }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
    if (!response?.candidates?.[0]?.finishReason) throw invalidResponse(context, 'an answer without a candidate finishReason')
    if (response.candidates[0].finishReason === MALFORMED_CALL) throw invalidResponse(context, MALFORMED_CALL_TEXT)
    const text = textOf(response)
    if (text !== '') yield { type: 'delta', text }
    const calls: ToolCallRequest[] = []
    addCalls(calls, response)
    if (calls.length > 0) yield { type: 'tool_calls', calls }
    yield usageOf(response) ?? { type: 'usage', inputTokens: 0, outputTokens: 0 }
  }

  /**
   * `models`: GET /v1beta/models/{model} (free; proves the key and the model). `completion`: a
   * generateContent of at most one token.
   */
  async probe (request: ProbeRequest): Promise<void> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    await singleCall<unknown>(
      request.signal,
      (signal) =>
        request.mode === 'models'
          ? this.client.models.get({ model: request.model, config: { abortSignal: signal } })
          : this.client.models.generateContent({
            model: request.model,
            contents: [{ role: 'user', parts: [{ text: 'ping' }] }],
            config: { maxOutputTokens: 1, abortSignal: signal, automaticContinuation: false }
          }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
  }

  private context (model: string, signal: AbortSignal): CallContext {
    return { provider: this.name, model, baseUrl: this.baseUrl, apiKey: this.apiKey, signal }
  }

  private toProviderError (err: unknown, context: CallContext): ProviderError {
    if (err instanceof GeminiHttpError) {
      const error = (err.body as { error?: { message?: unknown; status?: unknown } } | undefined)?.error
      const message = typeof error?.message === 'string' ? error.message : err.text
      const type = typeof error?.status === 'string' ? error.status : undefined
      return fromHttpFailure({ status: err.status, headers: err.headers, message, type, body: err.body }, context, err)
    }
    // An error object inside a stream that had started: the SDK's ApiError with the body as its message.
    if (err instanceof Error && err.name === 'ApiError') {
      const body = parseJson(err.message.replace(/^got status: [^.]*\. /, ''))
      const error = (body as { error?: { message?: unknown; status?: unknown } } | undefined)?.error
      const message = typeof error?.message === 'string' ? error.message : err.message
      return fromStreamError(typeof error?.status === 'string' ? error.status : undefined, message, context, err)
    }
    if (err instanceof Error && err.message.startsWith('Incomplete JSON segment')) return streamEndedEarly(context, 'a finishReason')
    if (err instanceof Error && err.message.startsWith('exception parsing stream chunk')) return invalidResponse(context, err.message, err)
    return fromTransportError(err, context)
  }
}

function usageOf (chunk: GenerateContentResponse): ChatChunk | undefined {
  const metadata = chunk.usageMetadata
  if (!metadata) return undefined
  return {
    type: 'usage',
    inputTokens: metadata.promptTokenCount ?? 0,
    // Thinking models bill their thoughts as output.
    outputTokens: (metadata.candidatesTokenCount ?? 0) + (metadata.thoughtsTokenCount ?? 0)
  }
}

/** The text parts of the first candidate (thought summaries left out). */
function textOf (chunk: GenerateContentResponse): string {
  const parts = chunk.candidates?.[0]?.content?.parts ?? []
  let text = ''
  for (const part of parts) if (typeof part.text === 'string' && !part.thought) text += part.text
  return text
}

/**
 * The functionCall parts of the first candidate, added to `calls`. Gemini often gives a call no id:
 * it gets `call_<n>`, n its place among the answer's calls, so ids are unique within the answer.
 */
function addCalls (calls: ToolCallRequest[], chunk: GenerateContentResponse): void {
  for (const part of chunk.candidates?.[0]?.content?.parts ?? []) {
    const call = part.functionCall
    if (!call) continue
    calls.push(toolCallFromValue(call.id || `call_${calls.length + 1}`, call.name ?? '', call.args))
  }
}

/** The offered tools as one Gemini tool of function declarations; no `tools` at all when none are offered. */
function geminiTools (tools: ToolDefinition[] | undefined): { tools: Tool[] } | Record<string, never> {
  if (!tools?.length) return {}
  return { tools: [{ functionDeclarations: tools.map((tool) => ({ name: tool.name, description: tool.description, parametersJsonSchema: tool.inputSchema })) }] }
}

/**
 * Gemini 3 models refuse a history whose functionCall part lacks the thought signature they sent
 * with it. The contract keeps no signature, so the first call of each step carries the value
 * Google documents for calls it did not sign ("thought signatures" FAQ); older models ignore it.
 */
const UNSIGNED_CALL = 'skip_thought_signature_validator'

/** A turn as Gemini content: model text then functionCall parts, or user functionResponse parts then text. */
function geminiContent (turn: AlternatingTurn): Content {
  const text: Part[] = turn.text === '' && (turn.toolCalls.length > 0 || turn.toolResults.length > 0) ? [] : [{ text: turn.text }]
  if (turn.role === 'assistant') {
    const calls = turn.toolCalls.map((call, i): Part => ({
      functionCall: { id: call.id, name: call.name, args: call.arguments },
      ...(i === 0 ? { thoughtSignature: UNSIGNED_CALL } : {})
    }))
    return { role: 'model', parts: [...text, ...calls] }
  }
  const results = turn.toolResults.map((result): Part => ({
    functionResponse: { id: result.callId, name: result.name, response: result.isError ? { error: result.content } : { result: result.content } }
  }))
  return { role: 'user', parts: [...results, ...text] }
}

function parseJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}
