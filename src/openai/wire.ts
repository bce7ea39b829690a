import { randomUUID } from 'node:crypto'
import type { ErrorBody } from '../errors.js'

// The OpenAI chat-completions wire format, as the official SDKs parse it: the JSON answer, the
// stream's chunks and the error body.

export interface OpenAiUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

export const usageOf = (usage: { inputTokens: number; outputTokens: number }): OpenAiUsage => ({
  prompt_tokens: usage.inputTokens,
  completion_tokens: usage.outputTokens,
  total_tokens: usage.inputTokens + usage.outputTokens
})

/** What every chunk of one completion and its JSON answer share. */
export interface CompletionMeta {
  id: string
  /** Unix seconds. */
  created: number
  model: string
}

export const newCompletionMeta = (model: string, nowMs: number): CompletionMeta => ({
  id: `chatcmpl-${randomUUID().replaceAll('-', '')}`,
  created: Math.floor(nowMs / 1000),
  model
})

export interface ChatCompletion extends CompletionMeta {
  object: 'chat.completion'
  choices: Array<{
    index: 0
    message: { role: 'assistant'; content: string; refusal: null }
    logprobs: null
    finish_reason: 'stop'
  }>
  usage: OpenAiUsage
}

export function completionBody (meta: CompletionMeta, content: string, usage: OpenAiUsage): ChatCompletion {
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, message: { role: 'assistant', content, refusal: null }, logprobs: null, finish_reason: 'stop' }],
    usage
  }
}

/**
 * The frames of one streamed completion: `data: <chunk>` lines with no event name or id, the first
 * delta carrying the role, a last choice with `finish_reason`, with `include_usage` a final chunk
 * with no choices and the usage (every other chunk then has `usage: null`), and `data: [DONE]`.
 */
export class ChunkFrames {
  constructor (
    private readonly meta: CompletionMeta,
    private readonly includeUsage: boolean
  ) {}

  /** The first chunk: the assistant role and empty content, as OpenAI opens a stream. */
  opening (): string {
    return this.choice({ role: 'assistant', content: '', refusal: null }, null)
  }

  delta (text: string): string {
    return this.choice({ content: text }, null)
  }

  /** The finish chunk, the usage chunk when asked for, and the end marker. */
  closing (usage: OpenAiUsage): string {
    let frames = this.choice({}, 'stop')
    if (this.includeUsage) frames += this.frame({ choices: [], usage })
    return frames + 'data: [DONE]\n\n'
  }

  private choice (delta: Record<string, unknown>, finishReason: 'stop' | null): string {
    return this.frame({ choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...(this.includeUsage ? { usage: null } : {}) })
  }

  private frame (fields: Record<string, unknown>): string {
    const { id, created, model } = this.meta
    return `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, ...fields })}\n\n`
  }
}

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

/** An error after a stream opened: OpenAI's SDKs raise an APIError for a `data: {"error": ...}` frame. */
export const errorFrame = (body: ErrorBody): string => `data: ${JSON.stringify(openAiError(body))}\n\n`

/**
 * The service's error body (section 3, as the error handler wrote it) in OpenAI's shape: `type` from
 * the status, `code` the service's own in lower case (`session_busy`, `llm_timeout`), 401 always
 * `invalid_api_key`, and `param` the field a validation or domain error names, written the way
 * OpenAI writes it (`messages[0].content`).
 */
export function openAiError (body: ErrorBody): OpenAiErrorBody {
  const { statusCode } = body
  const type = statusCode === 429 ? 'rate_limit_error' : statusCode >= 500 ? 'server_error' : 'invalid_request_error'
  let code = body.code && !body.code.startsWith('FST_') ? body.code.toLowerCase() : null
  if (statusCode === 401) code = 'invalid_api_key'
  else if (statusCode === 429) code ??= 'rate_limit_exceeded'
  return { error: { message: body.message, type, param: paramOf(body.details), code } }
}

/** `/messages/0/content` → `messages[0].content`, from the first detail that names a field. */
function paramOf (details: unknown): string | null {
  if (!Array.isArray(details)) return null
  const field = details.map((detail) => (detail as { field?: unknown })?.field).find((f): f is string => typeof f === 'string' && f !== '/')
  if (!field) return null
  return field
    .split('/')
    .filter(Boolean)
    .reduce((param, part) => (/^\d+$/.test(part) ? `${param}[${part}]` : param ? `${param}.${part}` : part), '')
}
