import { sleep, toolCallFromJson } from './call.js'
import type { ChatChunk, ChatRequest, ProbeRequest, Provider, ToolCallRequest, ToolDefinition } from './provider.js'

export interface EchoProviderOptions {
  /** Pause between two deltas (ECHO_TOKEN_DELAY_MS), to make the offline provider feel like a model. */
  tokenDelayMs?: number
}

const WORD = /\S+/gu
/** One delta per word, each carrying the whitespace before it, so the deltas concatenate to the text. */
const PIECE = /\s*\S+/gu
/** A line that asks for a tool: `/tool <name> <json args>`, the arguments optional. */
const TOOL_LINE = /^\/tool\s+(\S+)(?:\s+(.*))?$/su

/**
 * The built-in offline provider: answers `Echo (<model>): <last user message>`, deterministically, one
 * delta per word, then a usage chunk counting words as tokens. It makes the service usable with no
 * provider key, and gives tests and benchmarks a provider whose output they can predict.
 *
 * It also plays a model that calls tools, so that the tool loop shows with no key: offered tools, a
 * last user message made of `/tool <name> <json args>` lines is answered with those calls (one per
 * line, at once); once the results follow, it answers `Echo (<model>): <name> -> <result>` per result.
 */
export class EchoProvider implements Provider {
  readonly name = 'echo'
  private readonly tokenDelayMs: number

  constructor (options: EchoProviderOptions = {}) {
    this.tokenDelayMs = Math.max(0, options.tokenDelayMs ?? 0)
  }

  /**
   * The full text a request is answered with (what the deltas add up to): the results of the last
   * tool step when the turns end with them, else the last user message.
   */
  static replyText (request: Pick<ChatRequest, 'model' | 'messages'>): string {
    const results = lastToolResults(request.messages)
    if (results.length > 0) return `Echo (${request.model}): ${results.map((turn) => `${turn.toolResult?.name ?? 'tool'} -> ${turn.content}`).join('\n')}`
    return `Echo (${request.model}): ${lastUserMessage(request.messages)?.content ?? ''}`
  }

  /**
   * The tool calls a request is answered with, or undefined when it is answered with text: tools are
   * offered and the last turn is a user message whose every (non-blank) line is a `/tool` line.
   */
  static toolCalls (request: Pick<ChatRequest, 'messages' | 'tools'>): ToolCallRequest[] | undefined {
    const last = request.messages.at(-1)
    if (!request.tools?.length || last?.role !== 'user') return undefined
    const lines = last.content.split('\n').map((line) => line.trim()).filter((line) => line !== '')
    const asked = lines.map((line) => TOOL_LINE.exec(line))
    if (asked.length === 0 || asked.some((match) => match === null)) return undefined
    return asked.map((match, i) => toolCallFromJson(`echo_call_${i + 1}`, offeredName(match![1]!, request.tools!), match![2] ?? '{}'))
  }

  /** The deltas of a reply text, in order: their concatenation is exactly the text. */
  static split (text: string): string[] {
    const pieces: string[] = text.match(PIECE) ?? []
    const covered = pieces.reduce((length, piece) => length + piece.length, 0)
    const trailing = text.slice(covered)
    if (trailing !== '') {
      if (pieces.length === 0) pieces.push(trailing)
      else pieces[pieces.length - 1] += trailing
    }
    return pieces
  }

  static countWords (text: string): number {
    return text.match(WORD)?.length ?? 0
  }

  async * stream (request: ChatRequest): AsyncGenerator<ChatChunk> {
    const { signal } = request
    const inputTokens = request.messages.reduce((sum, turn) => sum + EchoProvider.countWords(turn.content), EchoProvider.countWords(request.systemPrompt))
    const calls = EchoProvider.toolCalls(request)
    if (calls) {
      if (this.tokenDelayMs > 0) await sleep(this.tokenDelayMs, signal)
      signal.throwIfAborted()
      yield { type: 'tool_calls', calls }
      yield { type: 'usage', inputTokens, outputTokens: EchoProvider.countWords(request.messages.at(-1)!.content) }
      return
    }
    const text = EchoProvider.replyText(request)
    const pieces = EchoProvider.split(text)
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0 && this.tokenDelayMs > 0) await sleep(this.tokenDelayMs, signal)
      signal.throwIfAborted()
      yield { type: 'delta', text: pieces[i]! }
    }
    signal.throwIfAborted()
    yield { type: 'usage', inputTokens, outputTokens: EchoProvider.countWords(text) }
  }

  /** Echo runs in-process: it is up whenever the service is. */
  async probe (request: ProbeRequest): Promise<void> {
    request.signal.throwIfAborted()
  }
}

function lastUserMessage (messages: ChatRequest['messages']): ChatRequest['messages'][number] | undefined {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i]!.role === 'user') return messages[i]
  return undefined
}

/** The tool turns that end the history (the results of the last step), when no user turn follows them. */
function lastToolResults (messages: ChatRequest['messages']): ChatRequest['messages'] {
  let start = messages.length
  while (start > 0 && messages[start - 1]!.role === 'tool') start--
  return messages.slice(start)
}

/**
 * The offered tool a `/tool` line names: the same name, or the same once a `<server>__` prefix is
 * left off either side (`<server>/<tool>` is read as `<server>__<tool>`); else the name as given,
 * which the service refuses with an error result, as it would a model's.
 */
function offeredName (asked: string, tools: ToolDefinition[]): string {
  const name = asked.replace('/', '__')
  const offered = tools.find((tool) => tool.name === name) ??
    tools.find((tool) => bare(tool.name) === name || tool.name === bare(name) || bare(tool.name) === bare(name))
  return offered?.name ?? asked
}

function bare (name: string): string {
  const prefixEnd = name.indexOf('__')
  return prefixEnd < 0 ? name : name.slice(prefixEnd + 2)
}
