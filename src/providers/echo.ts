import { sleep } from './call.js'
import type { ChatChunk, ChatRequest, ProbeRequest, Provider } from './provider.js'

export interface EchoProviderOptions {
  /** Pause between two deltas (ECHO_TOKEN_DELAY_MS), to make the offline provider feel like a model. */
  tokenDelayMs?: number
}

const WORD = /\S+/gu
/** One delta per word, each carrying the whitespace before it, so the deltas concatenate to the text. */
const PIECE = /\s*\S+/gu

/**
 * The built-in offline provider: answers `Echo (<model>): <last user message>`, deterministically, one
 * delta per word, then a usage chunk counting words as tokens. It makes the service usable with no
 * provider key, and gives tests and benchmarks a provider whose output they can predict.
 */
export class EchoProvider implements Provider {
  readonly name = 'echo'
  private readonly tokenDelayMs: number

  constructor (options: EchoProviderOptions = {}) {
    this.tokenDelayMs = Math.max(0, options.tokenDelayMs ?? 0)
  }

  /** The full text a request is answered with (what the deltas add up to). */
  static replyText (request: Pick<ChatRequest, 'model' | 'messages'>): string {
    let content = ''
    for (let i = request.messages.length - 1; i >= 0; i--) {
      if (request.messages[i]!.role === 'user') {
        content = request.messages[i]!.content
        break
      }
    }
    return `Echo (${request.model}): ${content}`
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
    const text = EchoProvider.replyText(request)
    const pieces = EchoProvider.split(text)
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0 && this.tokenDelayMs > 0) await sleep(this.tokenDelayMs, signal)
      signal.throwIfAborted()
      yield { type: 'delta', text: pieces[i]! }
    }
    signal.throwIfAborted()
    const inputTokens = request.messages.reduce((sum, turn) => sum + EchoProvider.countWords(turn.content), EchoProvider.countWords(request.systemPrompt))
    yield { type: 'usage', inputTokens, outputTokens: EchoProvider.countWords(text) }
  }

  /** Echo runs in-process: it is up whenever the service is. */
  async probe (request: ProbeRequest): Promise<void> {
    request.signal.throwIfAborted()
  }
}
