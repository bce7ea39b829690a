import type { AgentDefinition, AgentSelection } from './agent.js'

export interface SelectAgentInput {
  /** The user message being answered. */
  content: string
  /** The agents that may answer (a session's agents), in order: the first is the default. */
  candidates: AgentDefinition[]
  /** The agent the client named (`agent` in the message body); wins unless it is down. */
  requested?: string
  /** True for an agent the health monitor marks down: it is skipped. */
  isDown?: (id: string) => boolean
  /**
   * Finds agents outside `candidates` (a requested agent, or a fallback that is not one of the
   * session's agents): usually the registry's get. Without it only candidates are considered.
   */
  resolve?: (id: string) => AgentDefinition | undefined
}

/**
 * Chooses the agent that answers a message. Pure: no I/O, same input, same answer.
 *
 * 1. A requested agent answers (reason 'requested'); when it is down, the first agent up along its
 *    fallback chain answers instead (reason 'fallback'); when none is up, the requested agent is
 *    tried anyway, so the failure the client sees is about the agent it asked for.
 * 2. Otherwise each candidate that is up scores the number of its distinct expertise keywords found in
 *    the message (a multi-word keyword as a phrase; case, accents' composition and simple English
 *    plurals do not matter). The highest score answers (reason 'expertise'); ties go to the earlier
 *    candidate.
 * 3. No keyword matched: the first candidate that is up (reason 'default'). All down: the first up
 *    agent along the candidates' fallback chains (reason 'fallback'), else the first candidate.
 */
export function selectAgent (input: SelectAgentInput): AgentSelection {
  const { content, candidates, requested } = input
  const isDown = input.isDown ?? (() => false)
  const find = (id: string) => candidates.find((agent) => agent.id === id) ?? input.resolve?.(id)

  if (requested !== undefined) {
    const agent = find(requested)
    if (!agent) throw new Error(`Unknown agent "${requested}"`)
    if (!isDown(agent.id)) return { agent, reason: 'requested', matched: [], score: 0 }
    const fallback = firstUpFallback(agent, find, isDown)
    return fallback ? { agent: fallback, reason: 'fallback', matched: [], score: 0 } : { agent, reason: 'requested', matched: [], score: 0 }
  }

  if (candidates.length === 0) throw new Error('No agent to choose from')
  const up = candidates.filter((agent) => !isDown(agent.id))
  if (up.length === 0) {
    for (const agent of candidates) {
      const fallback = firstUpFallback(agent, find, isDown)
      if (fallback) return { agent: fallback, reason: 'fallback', matched: [], score: 0 }
    }
    return { agent: candidates[0]!, reason: 'default', matched: [], score: 0 }
  }

  const text = analyse(content)
  let best: AgentSelection | undefined
  for (const agent of up) {
    const matched = matchedKeywords(agent.expertise, text)
    if (matched.length > (best?.score ?? 0)) best = { agent, reason: 'expertise', matched, score: matched.length }
  }
  return best ?? { agent: up[0]!, reason: 'default', matched: [], score: 0 }
}

/** Each agent's number of distinct expertise keywords found in `content`, as selectAgent scores them. */
export function expertiseScores (content: string, agents: AgentDefinition[]): number[] {
  const text = analyse(content)
  return agents.map((agent) => matchedKeywords(agent.expertise, text).length)
}

function firstUpFallback (
  agent: AgentDefinition,
  find: (id: string) => AgentDefinition | undefined,
  isDown: (id: string) => boolean
): AgentDefinition | undefined {
  const seen = new Set([agent.id])
  let next = agent.fallback === undefined ? undefined : find(agent.fallback)
  while (next && !seen.has(next.id)) {
    if (!isDown(next.id)) return next
    seen.add(next.id)
    next = next.fallback === undefined ? undefined : find(next.fallback)
  }
  return undefined
}

// Words: letters, marks and digits, with inner apostrophes (don't) and a trailing + or # (c++, c#).
const TOKEN = /[\p{L}\p{M}\p{N}]+(?:['’][\p{L}\p{M}\p{N}]+)*[+#]*/gu
const LATIN_WORD = /^[\p{Script=Latin}]+$/u
// Scripts written without spaces between words: keywords in them match as substrings.
const UNSPACED = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Thai}\p{Script=Lao}\p{Script=Khmer}\p{Script=Myanmar}]/u
const SEPARATOR = '\u0001'

interface AnalysedText {
  /** The normalised text, for substring matches. */
  normalized: string
  /** SEPARATOR + the stemmed tokens joined by SEPARATOR + SEPARATOR, for phrase matches. */
  words: string
  /** The stemmed tokens, for one-word keywords. */
  tokens: Set<string>
}

function normalize (text: string): string {
  return text.normalize('NFKC').toLowerCase()
}

function analyse (text: string): AnalysedText {
  const normalized = normalize(text)
  const words = tokens(normalized)
  return { normalized, words: SEPARATOR + words.join(SEPARATOR) + SEPARATOR, tokens: new Set(words) }
}

function tokens (normalized: string): string[] {
  return (normalized.match(TOKEN) ?? []).map(stem)
}

/** Simple English plural tolerance, applied alike to messages and keywords: tests → test, queries → query. */
function stem (word: string): string {
  if (word.length < 4 || !LATIN_WORD.test(word)) return word
  if (word.endsWith('ies') && word.length > 4) return word.slice(0, -3) + 'y'
  if (/(?:ss|sh|ch|x|z)es$/.test(word)) return word.slice(0, -2)
  if (/(?:ss|us|is)$/.test(word) || !word.endsWith('s')) return word
  return word.slice(0, -1)
}

interface PreparedKeyword {
  keyword: string
  normalized: string
  /** Matched as a substring (a script written without spaces), else as a phrase of whole words. */
  unspaced: boolean
  /** SEPARATOR + the keyword's stemmed tokens + SEPARATOR; '' when it has none. */
  phrase: string
  /** Its one token, when it is a single word. */
  word: string | undefined
}

// Each manifest's expertise lists are normalised and tokenised once, not at every message.
const prepared = new WeakMap<string[], PreparedKeyword[]>()

function prepare (expertise: string[]): PreparedKeyword[] {
  let keywords = prepared.get(expertise)
  if (!keywords) {
    keywords = []
    const seen = new Set<string>()
    for (const keyword of expertise) {
      const normalized = normalize(keyword).trim()
      if (normalized === '' || seen.has(normalized)) continue
      seen.add(normalized)
      const words = tokens(normalized)
      keywords.push({ keyword, normalized, unspaced: UNSPACED.test(normalized), phrase: words.length > 0 ? SEPARATOR + words.join(SEPARATOR) + SEPARATOR : '', word: words.length === 1 ? words[0] : undefined })
    }
    prepared.set(expertise, keywords)
  }
  return keywords
}

function matchedKeywords (expertise: string[], text: AnalysedText): string[] {
  const matched: string[] = []
  for (const { keyword, normalized, unspaced, phrase, word } of prepare(expertise)) {
    const found = unspaced ? text.normalized.includes(normalized) : word !== undefined ? text.tokens.has(word) : phrase !== '' && text.words.includes(phrase)
    if (found) matched.push(keyword)
  }
  return matched
}
