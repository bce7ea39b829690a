/**
 * The contract between the conversation path and an LLM provider. Every provider streams: a JSON
 * reply is the concatenation of the same deltas an SSE reply sends as they arrive.
 */
export interface ChatTurn {
  role: 'user' | 'assistant' | 'system'
  content: string
}

export interface ChatRequest {
  model: string
  systemPrompt: string
  /** Oldest first; the last one is the user message being answered. */
  messages: ChatTurn[]
  temperature: number
  maxTokens: number
  /** Aborted when the reply's deadline (LLM_TIMEOUT_MS) passes or the service shuts down. */
  signal: AbortSignal
}

export type ChatChunk =
  | { type: 'delta'; text: string }
  | { type: 'usage'; inputTokens: number; outputTokens: number }

export interface Provider {
  /** The manifest's provider name: openai | anthropic | gemini | openai-compatible | echo. */
  readonly name: string
  /** Yields text deltas as the model produces them, and usage once known (usually last). */
  stream(request: ChatRequest): AsyncIterable<ChatChunk>
}
