import Anthropic, { APIConnectionError, APIConnectionTimeoutError, APIError } from '@anthropic-ai/sdk'
import { alternatingTurns, callController, NO_SDK_TIMEOUT_MS, singleCall, toolCallFromJson, toolCallFromValue, type AlternatingTurn } from './call.js'
import { providerFetch } from './http.js'
import { failure, fromHttpFailure, fromStreamError, fromTransportError, invalidResponse, streamEndedEarly, timedOut, type CallContext } from './errors.js'
import type { ChatChunk, ChatRequest, ProbeRequest, Provider, ProviderError, ToolCallRequest, ToolDefinition } from './provider.js'

export { ANTHROPIC_DEFAULT_BASE_URL } from './call.js'

export interface AnthropicClientOptions {
  apiKey: string
  baseUrl: string
}

/**
 * An Anthropic SDK client that never retries and has no timeout of its own (the caller's signal bounds
 * every call). The base URL is always passed, so the SDK never falls back to its own environment.
 */
export function createAnthropicClient (options: AnthropicClientOptions): Anthropic {
  return new Anthropic({ apiKey: options.apiKey, baseURL: options.baseUrl, maxRetries: 0, timeout: NO_SDK_TIMEOUT_MS, fetch: providerFetch })
}

export interface AnthropicProviderOptions {
  client: Anthropic
  baseUrl: string
  apiKey: string | undefined
}

interface Usage {
  input: number
  cacheCreation: number
  cacheRead: number
  output: number
}

/**
 * Anthropic's Messages API through the official `@anthropic-ai/sdk`, streamed: text from
 * `content_block_delta` (text_delta) events, usage from `message_start` and `message_delta`, and
 * `message_stop` as the end of the reply; tool calls from `tool_use` blocks, their input assembled
 * from `input_json_delta` pieces. The manifest's temperature is not sent: API version
 * 2026-10-21 (the one SDK 1.x speaks) removed the sampling parameters and answers 400 to any of them.
 */
export class AnthropicProvider implements Provider {
  readonly name = 'anthropic'
  private readonly client: Anthropic
  private readonly baseUrl: string
  private readonly apiKey: string | undefined

  constructor (options: AnthropicProviderOptions) {
    this.client = options.client
    this.baseUrl = options.baseUrl
    this.apiKey = options.apiKey
  }

  async * stream (request: ChatRequest): AsyncGenerator<ChatChunk> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    const { system, turns } = alternatingTurns(request.systemPrompt, request.messages)
    const params: Params = {
      model: request.model,
      max_tokens: request.maxTokens,
      ...(system === '' ? {} : { system }),
      messages: turns.map(anthropicMessage),
      ...anthropicTools(request.tools)
    }
    if (request.stream === false) {
      yield * this.whole(request, params, context)
      return
    }

    const call = callController(request.signal)
    let events = 0
    let stopped = false
    let read = false
    const usage: Usage = { input: 0, cacheCreation: 0, cacheRead: 0, output: 0 }
    // tool_use blocks by their index: id and name from content_block_start, the input as JSON pieces.
    const toolBlocks = new Map<number, { id: string; name: string; json: string }>()
    try {
      const stream = await this.client.messages.create({ ...params, stream: true }, { signal: call.signal })
      for await (const event of stream) {
        events++
        switch (event.type) {
          case 'message_start':
            addUsage(usage, event.message.usage)
            break
          case 'content_block_start':
            if (event.content_block.type === 'tool_use') toolBlocks.set(event.index, { id: event.content_block.id, name: event.content_block.name, json: '' })
            break
          case 'content_block_delta':
            if (event.delta.type === 'text_delta' && event.delta.text !== '') yield { type: 'delta', text: event.delta.text }
            else if (event.delta.type === 'input_json_delta') {
              const block = toolBlocks.get(event.index)
              if (block) block.json += event.delta.partial_json
            }
            break
          case 'message_delta':
            addUsage(usage, event.usage)
            break
          case 'message_stop':
            stopped = true
            break
        }
      }
      read = true
    } catch (err) {
      throw failure(err, context, (e) => this.toProviderError(e, context))
    } finally {
      call.release(read)
    }
    if (request.signal.aborted) throw request.signal.reason
    if (!stopped) throw events === 0 ? invalidResponse(context, 'an empty event stream') : streamEndedEarly(context, 'message_stop')
    // A tool_use block with no input_json_delta is a call without parameters: its input is {}.
    const calls = [...toolBlocks.entries()].sort(([a], [b]) => a - b).map(([, block]) => toolCallFromJson(block.id, block.name, block.json))
    if (calls.length > 0) yield { type: 'tool_calls', calls }
    yield { type: 'usage', inputTokens: usage.input + usage.cacheCreation + usage.cacheRead, outputTokens: usage.output }
  }

  /** The message in one response (`stream: false`): its text blocks as one delta, its tool_use blocks, then its usage. */
  private async * whole (request: ChatRequest, params: Params, context: CallContext): AsyncGenerator<ChatChunk> {
    const message: Anthropic.Message = await singleCall(
      request.signal,
      (signal) => this.client.messages.create({ ...params, stream: false }, { signal }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
    if (!message?.stop_reason || !Array.isArray(message.content)) throw invalidResponse(context, 'a message without content or stop_reason')
    let text = ''
    const calls: ToolCallRequest[] = []
    for (const block of message.content) {
      if (block.type === 'text') text += block.text
      else if (block.type === 'tool_use') calls.push(toolCallFromValue(block.id, block.name, block.input))
    }
    if (text !== '') yield { type: 'delta', text }
    if (calls.length > 0) yield { type: 'tool_calls', calls }
    const usage: Usage = { input: 0, cacheCreation: 0, cacheRead: 0, output: 0 }
    addUsage(usage, message.usage)
    yield { type: 'usage', inputTokens: usage.input + usage.cacheCreation + usage.cacheRead, outputTokens: usage.output }
  }

  /**
   * `models`: GET /v1/models/{model} (free, and it proves the key and that the model or alias exists).
   * `completion`: a 1-token message.
   */
  async probe (request: ProbeRequest): Promise<void> {
    const context = this.context(request.model, request.signal)
    request.signal.throwIfAborted()
    await singleCall<unknown>(
      request.signal,
      (signal) =>
        request.mode === 'models'
          ? this.client.models.retrieve(request.model, {}, { signal })
          : this.client.messages.create({ model: request.model, max_tokens: 1, messages: [{ role: 'user', content: 'ping' }] }, { signal }),
      (err) => failure(err, context, (e) => this.toProviderError(e, context))
    )
  }

  private context (model: string, signal: AbortSignal): CallContext {
    return { provider: this.name, model, baseUrl: this.baseUrl, apiKey: this.apiKey, signal }
  }

  private toProviderError (err: unknown, context: CallContext): ProviderError {
    if (err instanceof APIConnectionTimeoutError) return timedOut(context, err)
    if (err instanceof APIConnectionError) return fromTransportError(err.cause ?? err, context)
    if (err instanceof APIError) {
      const message = err.apiMessage ?? err.message.replace(/^\d{3} (status code \(no body\))?/, '')
      const type = err.type ?? undefined
      if (err.status === undefined) return fromStreamError(type, message, context, err)
      return fromHttpFailure({ status: err.status, headers: err.headers, message, type }, context, err)
    }
    return fromTransportError(err, context)
  }
}

/** The request without its `stream` flag: the same for a token stream and a whole answer. */
type Params = Omit<Anthropic.MessageCreateParamsNonStreaming, 'stream'>

/** The offered tools in Anthropic's format; no `tools` field at all when none are offered. */
function anthropicTools (tools: ToolDefinition[] | undefined): { tools: Anthropic.Tool[] } | Record<string, never> {
  if (!tools?.length) return {}
  return { tools: tools.map((tool) => ({ name: tool.name, description: tool.description, input_schema: tool.inputSchema as Anthropic.Tool.InputSchema })) }
}

/**
 * A plain turn keeps its text as a string; a turn of a tool exchange is content blocks: the text
 * then the tool_use blocks (assistant), or every tool_result block then the text (user): Anthropic
 * wants all the results of a step in the one user turn that follows it.
 */
function anthropicMessage (turn: AlternatingTurn): Anthropic.MessageParam {
  if (turn.toolCalls.length === 0 && turn.toolResults.length === 0) return { role: turn.role, content: turn.text }
  const text: Anthropic.TextBlockParam[] = turn.text === '' ? [] : [{ type: 'text', text: turn.text }]
  if (turn.role === 'assistant') {
    return { role: 'assistant', content: [...text, ...turn.toolCalls.map((call): Anthropic.ToolUseBlockParam => ({ type: 'tool_use', id: call.id, name: call.name, input: call.arguments }))] }
  }
  const results = turn.toolResults.map((result): Anthropic.ToolResultBlockParam => ({ type: 'tool_result', tool_use_id: result.callId, content: result.content, is_error: result.isError }))
  return { role: 'user', content: [...results, ...text] }
}

/**
 * message_start carries the input tokens (and cache reads and writes); message_delta carries the
 * cumulative output tokens, and on newer API versions the cumulative input counts too.
 */
function addUsage (
  usage: Usage,
  reported: { input_tokens?: number | null; output_tokens?: number | null; cache_creation_input_tokens?: number | null; cache_read_input_tokens?: number | null } | null | undefined
): void {
  if (!reported) return
  if (typeof reported.input_tokens === 'number') usage.input = reported.input_tokens
  if (typeof reported.cache_creation_input_tokens === 'number') usage.cacheCreation = reported.cache_creation_input_tokens
  if (typeof reported.cache_read_input_tokens === 'number') usage.cacheRead = reported.cache_read_input_tokens
  if (typeof reported.output_tokens === 'number') usage.output = reported.output_tokens
}
