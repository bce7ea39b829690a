import type { ChatTurn } from './provider.js'

// The providers' public APIs, used when neither the agent nor the environment names a base URL.
export const OPENAI_DEFAULT_BASE_URL = 'https://api.openai.com/v1'
export const ANTHROPIC_DEFAULT_BASE_URL = 'https://api.anthropic.com'
export const GEMINI_DEFAULT_BASE_URL = 'https://generativelanguage.googleapis.com'

/**
 * A controller for one provider call: it aborts when the caller's signal does, and `release()` aborts
 * it too, so that a call the caller stopped reading (an early `return()` of the stream) closes its
 * connection at once whatever the SDK does about it. A call read to its end has nothing left to close
 * (`release(true)`): aborting it anyway costs an exception object and the SDK's abort handlers on
 * every reply. The SDK gets `controller.signal`; the caller's own signal stays untouched, so
 * `signal.aborted` still tells a caller's abort from our release.
 */
export function callController (signal: AbortSignal): { signal: AbortSignal; release: (finished?: boolean) => void } {
  const controller = new AbortController()
  const onAbort = () => controller.abort(signal.reason)
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  return {
    signal: controller.signal,
    release: (finished = false) => {
      signal.removeEventListener('abort', onAbort)
      if (!finished) controller.abort()
    }
  }
}

/**
 * A request-response call (a whole answer, a probe) under its own `callController`: released without
 * an abort once answered, aborted when it failed, its error passed through `mapError`.
 */
export async function singleCall<T> (signal: AbortSignal, run: (signal: AbortSignal) => Promise<T>, mapError: (err: unknown) => unknown): Promise<T> {
  const call = callController(signal)
  try {
    const result = await run(call.signal)
    call.release(true)
    return result
  } catch (err) {
    call.release()
    throw mapError(err)
  }
}

/** The largest delay setTimeout accepts: an SDK timeout this long never fires (the signal bounds calls). */
export const NO_SDK_TIMEOUT_MS = 2_147_483_647

export interface ConversationTurns {
  /** The system prompt, with any system turns of the history appended. */
  system: string
  /** User and assistant turns, consecutive turns of one role merged, starting with a user turn. */
  turns: { role: 'user' | 'assistant'; content: string }[]
}

/**
 * History for the APIs that take the system prompt apart and want user/assistant turns that
 * alternate from a user turn (Anthropic, Gemini). Two user turns in a row happen when a reply failed;
 * a history window can start with an assistant turn: both are made acceptable here.
 */
export function alternatingTurns (systemPrompt: string, messages: ChatTurn[]): ConversationTurns {
  const system = [systemPrompt, ...messages.filter((m) => m.role === 'system').map((m) => m.content)].filter((s) => s !== '').join('\n\n')
  const turns: ConversationTurns['turns'] = []
  for (const message of messages) {
    if (message.role === 'system' || message.role === 'tool') continue
    if (turns.length === 0 && message.role === 'assistant') continue
    const last = turns.at(-1)
    if (last && last.role === message.role) last.content = `${last.content}\n\n${message.content}`
    else turns.push({ role: message.role, content: message.content })
  }
  return { system, turns }
}

/** Waits `ms`, or rejects with the signal's reason (not a generic AbortError) as soon as it aborts. */
export function sleep (ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
