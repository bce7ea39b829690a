import type { ChatTurn, ToolCallRequest } from './provider.js'

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

export interface ToolResultTurn {
  callId: string
  name: string
  isError: boolean
  /** The result text. */
  content: string
}

/** A user or assistant turn of an API that wants them alternating, with its tool exchange kept in structured form. */
export interface AlternatingTurn {
  role: 'user' | 'assistant'
  /** The turn's text ('' for an assistant turn that only asks for tools, or a user turn of results only). */
  text: string
  /** assistant: the tool calls it asked for, every one answered in the next (user) turn. */
  toolCalls: ToolCallRequest[]
  /** user: the results of the previous turn's calls, in order, before the turn's text. */
  toolResults: ToolResultTurn[]
}

export interface ConversationTurns {
  /** The system prompt, with any system turns of the history appended. */
  system: string
  /** User and assistant turns, consecutive turns of one role merged, starting with a user turn. */
  turns: AlternatingTurn[]
}

/**
 * History for the APIs that take the system prompt apart and want user/assistant turns that
 * alternate from a user turn (Anthropic, Gemini). Two user turns in a row happen when a reply failed;
 * a history window can start with an assistant turn: both are made acceptable here. Tool results
 * become a user turn of their own right after the turn that asked for them (a user text that
 * follows joins it, after the results); a call without its result, or a result without its call
 * (a window that cut the exchange, a reply that failed between them), is left out, since both APIs
 * refuse a tool exchange that does not pair up.
 */
export function alternatingTurns (systemPrompt: string, messages: ChatTurn[]): ConversationTurns {
  const system = [systemPrompt, ...messages.filter((m) => m.role === 'system').map((m) => m.content)].filter((s) => s !== '').join('\n\n')
  const turns: AlternatingTurn[] = []
  for (const message of pairedToolTurns(messages)) {
    if (message.role === 'system') continue
    const last = turns.at(-1)
    // The first turn is a user's: a window that starts mid-conversation loses what comes before one.
    if (!last && message.role !== 'user') continue
    if (message.role === 'tool') {
      // pairedToolTurns keeps a result only right after its call's turn or another result.
      const result = { callId: message.toolResult!.callId, name: message.toolResult!.name, isError: message.toolResult!.isError, content: message.content }
      if (last?.role === 'user') last.toolResults.push(result)
      else turns.push({ role: 'user', text: '', toolCalls: [], toolResults: [result] })
      continue
    }
    const role = message.role as 'user' | 'assistant'
    const toolCalls = message.toolCalls ?? []
    if (last && last.role === role) {
      last.text = joinText(last.text, message.content)
      last.toolCalls.push(...toolCalls)
    } else {
      turns.push({ role, text: message.content, toolCalls: [...toolCalls], toolResults: [] })
    }
  }
  return { system, turns }
}

/**
 * The history with each assistant turn's tool calls kept only when a result answers them right
 * after it, and each result kept only when it answers a call of that turn: every provider refuses
 * a call left unanswered or a result that answers nothing. An assistant turn left with no text and
 * no calls is dropped (the APIs refuse empty turns).
 */
export function pairedToolTurns (messages: ChatTurn[]): ChatTurn[] {
  const kept: ChatTurn[] = []
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i]!
    if (message.role === 'tool') continue // only kept as part of the exchange below
    if (message.role !== 'assistant' || !message.toolCalls?.length) {
      kept.push(message)
      continue
    }
    const results: ChatTurn[] = []
    let j = i + 1
    for (; j < messages.length && messages[j]!.role === 'tool'; j++) if (messages[j]!.toolResult) results.push(messages[j]!)
    const answered = new Set(results.map((r) => r.toolResult!.callId))
    const calls = message.toolCalls.filter((call) => answered.has(call.id))
    const asked = new Set(calls.map((call) => call.id))
    if (calls.length > 0) kept.push({ ...message, toolCalls: calls }, ...results.filter((r) => asked.has(r.toolResult!.callId)))
    else if (message.content !== '') kept.push({ role: 'assistant', content: message.content })
    i = j - 1
  }
  return kept
}

function joinText (before: string, after: string): string {
  if (before === '') return after
  if (after === '') return before
  return `${before}\n\n${after}`
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

/**
 * A tool call whose arguments came as JSON text (OpenAI, Anthropic's streamed input, echo). Text
 * that is not JSON, or JSON that is not an object, gives {} and `argumentsError` saying why: the
 * call then gets an error result the model can act on, instead of failing the reply.
 */
export function toolCallFromJson (id: string, name: string, json: string): ToolCallRequest {
  // A call with no parameters may come with no arguments at all.
  if (json.trim() === '') return { id, name, arguments: {} }
  let value: unknown
  try {
    value = JSON.parse(json)
  } catch (err) {
    return { id, name, arguments: {}, argumentsError: `the arguments are not valid JSON (${(err as Error).message})` }
  }
  return toolCallFromValue(id, name, value)
}

/** A tool call whose arguments came parsed (Anthropic's whole input, Gemini's args); none at all is {}. */
export function toolCallFromValue (id: string, name: string, value: unknown): ToolCallRequest {
  if (value === undefined) return { id, name, arguments: {} }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const what = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`
    return { id, name, arguments: {}, argumentsError: `the arguments are ${what}, not a JSON object` }
  }
  return { id, name, arguments: value as Record<string, unknown> }
}
