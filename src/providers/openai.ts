import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError } from 'openai'
import type { ChatCompletion, ChatCompletionCreateParamsStreaming, ChatCompletionFunctionTool, ChatCompletionMessageParam } from 'openai/resources/chat/completions'
import { callController, NO_SDK_TIMEOUT_MS, pairedToolTurns, singleCall, toolCallFromJson } from './call.js'
import { providerFetch } from './http.js'
import { failure, fromHttpFailure, fromStreamError, fromTransportError, invalidResponse, streamEndedEarly, timedOut, type CallContext } from './errors.js'
import type { ChatChunk, ChatRequest, ChatTurn, ProbeRequest, Provider, ProviderError, ToolCallRequest, ToolDefinition } from './provider.js'

export { OPENAI_DEFAULT_BASE_URL } from './call.js'

export interface OpenAiClientOptions {
  apiKey: string
  baseUrl: string
}

/**
 * An OpenAI SDK client that never retries and has no timeout of its own: the resilience layer above
 * the adapters retries, and the caller's signal (LLM_TIMEOUT_MS, shutdown) bounds every call. The
 * organization and project are pinned so that the SDK reads nothing from the environment.
 */
export function createOpenAiClient (options: OpenAiClientOptions): OpenAI {
  return new OpenAI({
    apiKey: options.apiKey,
    baseURL: options.baseUrl,
    organization: null,
    project: null,
    maxRetries: 0,
    timeout: NO_SDK_TIMEOUT_MS,
    fetch: providerFetch
  })
}

export interface OpenAiProviderOptions {
  /** The manifest's provider name: openai, or openai-compatible (Ollama, vLLM, LM Studio, Groq...). */
  name: 'openai' | 'openai-compatible'
  client: OpenAI
  baseUrl: string
  /** The key the client sends, removed from error messages (undefined when it is a placeholder). */
  apiKey: string | undefined
}

/**
 * OpenAI chat completions through the official `openai` SDK, streamed with usage
 * (`stream_options.include_usage`). The same adapter serves any OpenAI-compatible server through
 * its base URL. Offered tools go as function tools; the calls of an answer come back from
 * `tool_calls` (assembled from their deltas when streamed) as one tool_calls chunk.
 */
export class OpenAiProvider implements Provider {
  readonly name: 'openai' | 'openai-compatible'
  private readonly client: OpenAI
  private readonly baseUrl: string
  private readonly apiKey: string | undefined

  constructor (options: OpenAiProviderOptions) {
    this.name = options.name
    this.client = options.client
    this.baseUrl = options.baseUrl
    this.apiKey = options.apiKey
  }

  async * stream (request: ChatRequest): AsyncGenerator<ChatChunk> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    const messages: ChatCompletionMessageParam[] = []
    if (request.systemPrompt !== '') messages.push({ role: 'system', content: request.systemPrompt })
    for (const turn of pairedToolTurns(request.messages)) messages.push(openAiMessage(turn))
    const tools = openAiTools(request.tools)
    if (request.stream === false) {
      yield * this.whole(request, messages, tools, context)
      return
    }
    const body: ChatCompletionCreateParamsStreaming = {
      model: request.model,
      messages,
      ...tools,
      temperature: request.temperature,
      ...this.maxTokens(request.maxTokens),
      stream: true,
      stream_options: { include_usage: true }
    }

    const call = callController(request.signal)
    let events = 0
    let finished = false
    let usage: ChatChunk | undefined
    let read = false
    const calls = new StreamedToolCalls()
    try {
      const stream = await this.client.chat.completions.create(body, { signal: call.signal })
      for await (const chunk of stream) {
        events++
        const choice = chunk.choices?.[0]
        const text = choice?.delta?.content
        if (typeof text === 'string' && text !== '') yield { type: 'delta', text }
        for (const piece of choice?.delta?.tool_calls ?? []) calls.add(piece)
        if (choice?.finish_reason) finished = true
        if (chunk.usage) usage = { type: 'usage', inputTokens: chunk.usage.prompt_tokens ?? 0, outputTokens: chunk.usage.completion_tokens ?? 0 }
      }
      read = true
    } catch (err) {
      throw failure(err, context, (e) => this.toProviderError(e, context))
    } finally {
      call.release(read)
    }
    // The SDK ends a stream quietly when its signal aborts: the caller still gets the reason.
    if (request.signal.aborted) throw request.signal.reason
    if (!finished) throw events === 0 ? invalidResponse(context, 'an empty event stream') : streamEndedEarly(context, 'a finish_reason')
    const assembled = calls.assembled()
    if (assembled.length > 0) yield { type: 'tool_calls', calls: assembled }
    if (usage) yield usage
  }

  /** The completion in one response (`stream: false`): its text as one delta, its tool calls, then its usage. */
  private async * whole (request: ChatRequest, messages: ChatCompletionMessageParam[], tools: OpenAiTools, context: CallContext): AsyncGenerator<ChatChunk> {
    const completion: ChatCompletion = await singleCall(
      request.signal,
      (signal) => this.client.chat.completions.create({ model: request.model, messages, ...tools, temperature: request.temperature, ...this.maxTokens(request.maxTokens), stream: false }, { signal }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
    const choice = completion.choices?.[0]
    if (!choice?.finish_reason) throw invalidResponse(context, choice ? 'a choice without a finish_reason' : 'a completion without choices')
    const text = choice.message?.content
    if (typeof text === 'string' && text !== '') yield { type: 'delta', text }
    const calls: ToolCallRequest[] = []
    for (const toolCall of choice.message?.tool_calls ?? []) {
      if (toolCall.type === 'function') calls.push(toolCallFromJson(toolCall.id || `call_${calls.length + 1}`, toolCall.function.name, toolCall.function.arguments))
    }
    if (calls.length > 0) yield { type: 'tool_calls', calls }
    yield { type: 'usage', inputTokens: completion.usage?.prompt_tokens ?? 0, outputTokens: completion.usage?.completion_tokens ?? 0 }
  }

  /**
   * `models`: GET /models (the list, one request): every OpenAI-compatible server has it (vLLM and
   * LM Studio have no GET /models/{id}), and it proves the server answers and accepts the key.
   * `completion`: a non-streamed completion of at most one token, which proves the model itself.
   */
  async probe (request: ProbeRequest): Promise<void> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    await singleCall<unknown>(
      request.signal,
      (signal) =>
        request.mode === 'models'
          ? this.client.models.list({ signal })
          : this.client.chat.completions.create({ model: request.model, messages: [{ role: 'user', content: 'ping' }], ...this.maxTokens(1), stream: false }, { signal }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
  }

  /**
   * OpenAI deprecated `max_tokens` for `max_completion_tokens` (its reasoning models refuse the old
   * name); OpenAI-compatible servers (Ollama, older vLLM) know only `max_tokens`.
   */
  private maxTokens (value: number): { max_completion_tokens: number } | { max_tokens: number } {
    return this.name === 'openai' ? { max_completion_tokens: value } : { max_tokens: value }
  }

  private context (model: string, signal: AbortSignal): CallContext {
    return { provider: this.name, model, baseUrl: this.baseUrl, apiKey: this.apiKey, signal }
  }

  private toProviderError (err: unknown, context: CallContext): ProviderError {
    if (err instanceof APIConnectionTimeoutError) return timedOut(context, err)
    if (err instanceof APIConnectionError) return fromTransportError(err.cause ?? err, context)
    if (err instanceof APIError) {
      const body = err.error as { message?: unknown; type?: unknown; code?: unknown } | undefined
      const message = typeof body?.message === 'string' ? body.message : err.message.replace(/^\d{3} (status code \(no body\))?/, '')
      const type = typeof body?.type === 'string' ? body.type : typeof body?.code === 'string' ? body.code : undefined
      if (err.status === undefined) return fromStreamError(type, message, context, err)
      return fromHttpFailure({ status: err.status, headers: err.headers, message, type }, context, err)
    }
    return fromTransportError(err, context)
  }
}

type OpenAiTools = { tools: ChatCompletionFunctionTool[] } | Record<string, never>

/** The offered tools as OpenAI function tools; no `tools` field at all when none are offered. */
function openAiTools (tools: ToolDefinition[] | undefined): OpenAiTools {
  if (!tools?.length) return {}
  return { tools: tools.map((tool) => ({ type: 'function', function: { name: tool.name, description: tool.description, parameters: tool.inputSchema } })) }
}

function openAiMessage (turn: ChatTurn): ChatCompletionMessageParam {
  // A tool message has no error flag in this format: an error result's text says it is one.
  if (turn.role === 'tool') return { role: 'tool', tool_call_id: turn.toolResult!.callId, content: turn.toolResult!.isError ? `Error: ${turn.content}` : turn.content }
  if (turn.role === 'assistant' && turn.toolCalls?.length) {
    return {
      role: 'assistant',
      content: turn.content === '' ? null : turn.content,
      tool_calls: turn.toolCalls.map((call) => ({ id: call.id, type: 'function', function: { name: call.name, arguments: JSON.stringify(call.arguments) } }))
    }
  }
  if (turn.role === 'user' && turn.name !== undefined) return { role: 'user', content: turn.content, name: openAiName(turn.name) }
  return { role: turn.role, content: turn.content }
}

/**
 * Streamed tool calls arrive as pieces keyed by `index`: the first piece of a call has its id and
 * name, the arguments come as JSON text in fragments (a call's pieces need not be contiguous). Some
 * OpenAI-compatible servers repeat the id and name in every piece, or send each call whole in one
 * piece without an index: both are read as the calls they are.
 */
class StreamedToolCalls {
  private readonly byIndex = new Map<number, { id: string; name: string; arguments: string }>()

  add (piece: { index?: number; id?: string; function?: { name?: string; arguments?: string } }): void {
    const index = typeof piece.index === 'number' ? piece.index : this.byIndex.size
    let call = this.byIndex.get(index)
    if (!call) this.byIndex.set(index, (call = { id: '', name: '', arguments: '' }))
    if (piece.id) call.id = piece.id
    if (piece.function?.name) call.name = piece.function.name
    if (piece.function?.arguments) call.arguments += piece.function.arguments
  }

  /** The calls in index order; a server that sent no id gets one (`call_<n>`, unique in the answer). */
  assembled (): ToolCallRequest[] {
    return [...this.byIndex.entries()]
      .sort(([a], [b]) => a - b)
      .map(([, call], i) => toolCallFromJson(call.id || `call_${i + 1}`, call.name, call.arguments))
  }
}

/** OpenAI's `name` allows letters, digits, "_" and "-", at most 64. */
function openAiName (name: string): string {
  return name.replace(/[^a-zA-Z0-9_-]+/g, '_').slice(0, 64)
}
