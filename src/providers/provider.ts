/**
 * The contract between the conversation path and an LLM provider. Every provider streams: a JSON
 * reply is the concatenation of the same deltas an SSE reply sends as they arrive.
 */
export interface ChatTurn {
  role: 'user' | 'assistant' | 'system' | 'tool'
  /** The text; for a `tool` turn, the tool's result text (already cut at TOOL_RESULT_MAX_CHARS). */
  content: string
  /**
   * In a group conversation, the agent that said a `user` turn (another agent's message, its text
   * prefixed with "[Name]: "): sent as OpenAI's `name` field; the other wire formats have none.
   */
  name?: string
  /** An `assistant` turn in which the model asked for tool calls (its `content` the text before them, often ''). */
  toolCalls?: ToolCallRequest[]
  /** A `tool` turn: which call it answers (follows the assistant turn that asked for it). */
  toolResult?: { callId: string; name: string; isError: boolean }
}

/** A tool offered to the model, under the name the model sees (^[a-zA-Z0-9_-]{1,64}$, unique in the request). */
export interface ToolDefinition {
  name: string
  description: string
  /** A JSON Schema of type object (the MCP tool's inputSchema). */
  inputSchema: Record<string, unknown>
}

/** A tool call the model asked for. */
export interface ToolCallRequest {
  /** The provider's call id (OpenAI `call_…`, Anthropic `toolu_…`); Gemini has none: the adapter makes one. */
  id: string
  /** The ToolDefinition name the model used. */
  name: string
  /** The arguments, parsed; {} when the model sent none or they were not a JSON object (see argumentsError). */
  arguments: Record<string, unknown>
  /** Set when the model's arguments could not be parsed as a JSON object: the call gets an error result. */
  argumentsError?: string
}

export interface ChatRequest {
  model: string
  systemPrompt: string
  /** Oldest first; the last one is the user message being answered. */
  messages: ChatTurn[]
  temperature: number
  maxTokens: number
  /**
   * false: the caller wants the whole answer only (a JSON reply, the router), so the adapter asks for
   * the completion in one response instead of a token stream: less work at both ends, and the one
   * delta comes at the end, so a failure at any point can still be retried or handed to a fallback.
   * Default true (tokens as they come, for SSE clients).
   */
  stream?: boolean
  /**
   * The tools the model may call (absent or empty: none are offered, and the messages hold no tool
   * turns: the caller renders earlier tool exchanges as text for a request without tools).
   */
  tools?: ToolDefinition[]
  /** Aborted when the reply's deadline (LLM_TIMEOUT_MS) passes or the service shuts down. */
  signal: AbortSignal
}

export type ChatChunk =
  | { type: 'delta'; text: string }
  | { type: 'usage'; inputTokens: number; outputTokens: number }
  /**
   * The model stopped to call tools (OpenAI finish_reason tool_calls, Anthropic stop_reason tool_use,
   * Gemini functionCall parts): every call of the step at once, after its text deltas, before usage.
   * A streamed call is yielded only once assembled from its deltas.
   */
  | { type: 'tool_calls'; calls: ToolCallRequest[] }

/** How the health monitor probes a model: list the models (free) or ask for a 1-token completion. */
export type ProbeMode = 'models' | 'completion'

export interface ProbeRequest {
  model: string
  mode: ProbeMode
  signal: AbortSignal
}

export interface Provider {
  /** The manifest's provider name: openai | anthropic | gemini | openai-compatible | echo. */
  readonly name: string
  /**
   * Yields text deltas as the model produces them, and usage once known (usually last). Failures are
   * thrown as ProviderError; an abort of `request.signal` is rethrown as the signal's reason.
   */
  stream(request: ChatRequest): AsyncIterable<ChatChunk>
  /**
   * A cheap call that proves the provider answers for this model: resolves, or throws a
   * ProviderError (an abort of the signal is rethrown as its reason).
   */
  probe(request: ProbeRequest): Promise<void>
}

/**
 * Why a provider call failed, in terms the resilience layer acts on:
 * - auth: bad or missing key (401/403): not retryable, the agent is misconfigured;
 * - bad_request: the provider refused the request (400/404/422, unknown model): not retryable;
 * - rate_limited: 429, retryable after `retryAfterMs` when the provider said;
 * - server: 5xx (and 529 overloaded), retryable;
 * - connection: refused, reset, DNS, TLS, a stream cut mid-way: retryable before the first token;
 * - timeout: the client library's own timeout: retryable;
 * - invalid_response: the reply could not be understood: not retryable.
 */
export type ProviderErrorKind = 'auth' | 'bad_request' | 'rate_limited' | 'server' | 'connection' | 'timeout' | 'invalid_response'

const RETRYABLE: ReadonlySet<ProviderErrorKind> = new Set(['rate_limited', 'server', 'connection', 'timeout'])

export class ProviderError extends Error {
  override readonly name = 'ProviderError'
  readonly kind: ProviderErrorKind
  /** The provider name (openai, anthropic, gemini, openai-compatible). */
  readonly provider: string
  /** The HTTP status the provider answered, when it answered. */
  readonly status: number | undefined
  /** From Retry-After (or retry-after-ms), when the provider sent it. */
  readonly retryAfterMs: number | undefined

  constructor (
    kind: ProviderErrorKind,
    message: string,
    options: { provider: string; status?: number | undefined; retryAfterMs?: number | undefined; cause?: unknown }
  ) {
    super(message, { cause: options.cause })
    this.kind = kind
    this.provider = options.provider
    this.status = options.status
    this.retryAfterMs = options.retryAfterMs
  }

  get retryable (): boolean {
    return RETRYABLE.has(this.kind)
  }
}
