// The conversation log: one <article> per message, named by its speaker. Stored messages (history)
// and streamed replies go through the same code: a single reply is a round of one turn, so the
// events of a single reply (message, agent, delta..., done) and of a group round (message, then per
// turn agent, delta..., turn, and done with { replies, round }) are applied by one function.
// A reply's tool calls (tool_call, tool_result; stored as role "tool" messages before the reply)
// are shown in its article, before its text.

import { renderMarkdown } from './markdown.js'
import { abandonToolCalls, addStoredToolCall, addToolCall, findRunningToolCall, setToolResult } from './tool-calls.js'

let nextId = 0

const STOP_REASONS = {
  max_turns: 'the turn limit was reached',
  keyword: 'an agent said the closing word',
  manager: 'the manager closed it',
  timeout: 'it ran out of time',
  shutdown: 'the server is shutting down',
  error: 'every remaining agent failed'
}

/** Well-separated hues: the page gives the agents of the manifest one each, in order. */
export const HUES = [215, 340, 150, 30, 270, 190, 90, 0]

/** An agent the page does not know keeps one colour all the same, from its id (FNV-1a). */
export function hueOf (agent) {
  let hash = 0x811c9dc5
  for (const char of String(agent)) hash = Math.imul(hash ^ char.codePointAt(0), 0x01000193) >>> 0
  return HUES[hash % HUES.length]
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })

export class Conversation {
  /**
   * @param log the element with role="log"
   * @param options.speakerName (agentId) => the agent's display name
   * @param options.onError (errorBody, agentId?) => shown to the reader (the page's alert); agentId is
   *   the agent whose reply or turn failed, when one was answering (a failed turn's body has `turn`)
   * @param options.hue (agentId) => the agent's colour (a hue), by default from its id
   */
  constructor (log, { speakerName, onError, hue = hueOf }) {
    this.hue = hue
    this.log = log
    this.doc = log.ownerDocument
    this.speakerName = speakerName
    this.onError = onError
    this.pending = undefined
    this.articles = new Map()
  }

  clear () {
    for (const article of this.log.querySelectorAll('article, .round-note')) article.remove()
    this.articles.clear()
    this.pending = undefined
  }

  /** Stored messages, appended in seq order (one already shown is left as it is). */
  append (messages) {
    const { articles, unanswered } = this.storedArticles(messages)
    this.log.append(...articles)
    // Calls with no reply after them (it failed, or is still being written): an article of their own.
    if (unanswered.length > 0) this.log.append(this.toolsArticle(unanswered))
  }

  /** An older page of stored messages, put before the first message shown. */
  prepend (messages) {
    const first = this.log.querySelector('article')
    const { articles, unanswered } = this.storedArticles(messages)
    if (first) first.before(...articles)
    else this.log.append(...articles)
    if (unanswered.length === 0) return
    // The page ends inside an exchange: its calls belong to the reply already shown after them.
    if (first?.classList.contains('assistant') && first.dataset.agent === unanswered[0].agent) {
      const calls = unanswered.map((message) => this.trackTool(addStoredToolCall(first, message), message))
      first.querySelector(':scope > .tools').prepend(...calls)
    } else if (first) {
      first.before(this.toolsArticle(unanswered))
    } else {
      this.log.append(this.toolsArticle(unanswered))
    }
  }

  /**
   * The articles of stored messages not shown yet, in order, each reply with the tool calls stored
   * before it (since the previous message that was not a tool call); `unanswered`: the calls after
   * the last reply.
   */
  storedArticles (messages) {
    const articles = []
    let calls = []
    for (const message of messages) {
      if (this.articles.has(message.id)) continue
      // Calls that no reply of their agent follows (a failed turn, a fallback that answered): on their own.
      if (calls.length > 0 && (message.role === 'user' || message.agent !== calls[0].agent)) {
        articles.push(this.toolsArticle(calls))
        calls = []
      }
      if (message.role === 'tool') {
        calls.push(message)
        continue
      }
      articles.push(this.storedArticle(message, message.role === 'assistant' ? calls : []))
      calls = []
    }
    return { articles, unanswered: calls }
  }

  /** The user's message as sent, shown at once; the `message` event replaces it with the stored one. */
  sending (text) {
    const article = this.article('You', 'user')
    this.setContent(article, text)
    article.classList.add('sending')
    this.log.append(article)
    this.outgoing = article
    return article
  }

  /** The message as sent could not be posted (nothing was stored): take it off the log. */
  unsend () {
    this.outgoing?.remove()
    this.outgoing = undefined
  }

  /** Applies one event of a streamed answer (single reply or group round). */
  apply (event, data) {
    if (event === 'message') {
      if (this.outgoing) {
        this.adopt(this.outgoing, data)
        this.outgoing.classList.remove('sending')
        this.outgoing = undefined
      } else {
        this.append([data])
      }
    } else if (event === 'agent') {
      const again = this.pending && !this.pending.finished && this.pending.turn === data.turn ? this.pending : undefined
      if (again && !again.article.querySelector(':scope > .tools')) {
        // The same turn announced again (the agent's fallback took over): that turn's article changes speaker.
        again.text = ''
        again.agent = data.agent
        this.setSpeaker(again.article, data.name ?? this.speakerName(data.agent), data.agent)
        return
      }
      // The first agent's tool calls stay under its name, as the history shows them; the fallback gets an article.
      if (again) this.settle(again, 'tools-only')
      const article = this.article(data.name ?? this.speakerName(data.agent), 'assistant', data.agent)
      article.classList.add('streaming')
      article.setAttribute('aria-busy', 'true')
      if (data.turn !== undefined) article.querySelector('.meta').textContent = `turn ${data.turn}`
      this.log.append(article)
      this.pending = { article, agent: data.agent, turn: data.turn, text: '', finished: false }
    } else if (event === 'tool_call') {
      if (!this.pending || this.pending.finished) return
      addToolCall(this.pending.article, data)
    } else if (event === 'tool_result') {
      const call = findRunningToolCall(this.pending?.article ?? this.log, data.callId)
      if (call) setToolResult(call, data)
    } else if (event === 'delta') {
      if (!this.pending || this.pending.finished) return
      this.pending.text += data.text
      this.scheduleRender(this.pending)
    } else if (event === 'turn') {
      this.finish(data)
    } else if (event === 'done') {
      if (Array.isArray(data.replies)) {
        for (const reply of data.replies) if (!this.articles.has(reply.id)) this.finish(reply)
        if (data.round) this.roundNote(data.round)
      } else {
        this.finish(data)
      }
    } else if (event === 'error') {
      this.onError(data, this.fail(data))
    }
  }

  /** The streaming article of this turn becomes the stored message (or one is made for it). */
  finish (message) {
    const pending = this.pending && !this.pending.finished ? this.pending : undefined
    if (pending) {
      this.settle(pending)
      this.adopt(pending.article, message)
      if (message.agent !== pending.agent) this.setSpeaker(pending.article, this.speakerName(message.agent), message.agent)
      this.setContent(pending.article, message.content, true)
    } else {
      this.log.append(this.storedArticle(message))
    }
  }

  /** A failed reply or turn: its article says so (a round goes on with the next turn). Returns the agent that failed, if one was answering. */
  fail (error) {
    const pending = this.pending && !this.pending.finished && (error.turn === undefined || this.pending.turn === error.turn) ? this.pending : undefined
    if (!pending) return undefined
    this.settle(pending, 'failed')
    abandonToolCalls(pending.article)
    const note = this.doc.createElement('p')
    note.className = 'failure'
    note.textContent = `No reply: ${error.message ?? 'the reply failed'}`
    pending.article.querySelector('.body').append(note)
    return pending.agent
  }

  /** The streaming article is done streaming (finished, failed, or left with its tool calls only). */
  settle (pending, state) {
    pending.finished = true
    if (this.pending === pending) this.pending = undefined
    pending.article.classList.remove('streaming')
    if (state) pending.article.classList.add(state)
    pending.article.removeAttribute('aria-busy')
  }

  roundNote (round) {
    const note = this.doc.createElement('p')
    note.className = 'round-note'
    const turns = `${round.turns} ${round.turns === 1 ? 'turn' : 'turns'}`
    note.textContent = `Round over after ${turns}: ${STOP_REASONS[round.stop] ?? round.stop}.`
    this.log.append(note)
  }

  /** A stored message's article; a reply's shows the tool calls stored before it first. */
  storedArticle (message, toolMessages = []) {
    const user = message.role === 'user'
    const article = this.article(user ? 'You' : this.speakerName(message.agent), user ? 'user' : 'assistant', message.agent)
    this.adopt(article, message)
    for (const call of toolMessages) this.trackTool(addStoredToolCall(article, call), call)
    this.setContent(article, message.content, !user)
    return article
  }

  /** Tool calls stored with no reply after them: shown under the agent that made them, with no text. */
  toolsArticle (toolMessages) {
    const last = toolMessages.at(-1)
    const article = this.article(this.speakerName(last.agent), 'assistant', last.agent)
    article.classList.add('tools-only')
    this.stamp(article, last.createdAt)
    for (const call of toolMessages) this.trackTool(addStoredToolCall(article, call), call)
    return article
  }

  /** A stored call shown: its message counts as shown (a later page does not show it again). */
  trackTool (details, message) {
    this.articles.set(message.id, details)
    return details
  }

  /** An article whose accessible name is its speaker (the header's name element labels it). */
  article (speaker, role, agent) {
    const doc = this.doc
    const article = doc.createElement('article')
    article.className = `message ${role}`
    const header = doc.createElement('header')
    const who = doc.createElement('span')
    who.className = 'who'
    who.id = `speaker-${++nextId}`
    who.textContent = speaker
    const meta = doc.createElement('span')
    meta.className = 'meta'
    header.append(who, meta)
    const body = doc.createElement('div')
    body.className = 'body'
    article.append(header, body)
    article.setAttribute('aria-labelledby', who.id)
    if (agent) {
      article.dataset.agent = agent
      article.style.setProperty('--hue', String(this.hue(agent)))
    }
    return article
  }

  setSpeaker (article, speaker, agent) {
    article.querySelector('.who').textContent = speaker
    article.dataset.agent = agent
    article.style.setProperty('--hue', String(this.hue(agent)))
  }

  /** The stored message's identity and time on its article. */
  adopt (article, message) {
    article.dataset.id = message.id
    article.dataset.seq = String(message.seq)
    this.articles.set(message.id, article)
    this.stamp(article, message.createdAt)
  }

  /** The time on an article's meta line, after its turn when it has one. */
  stamp (article, createdAt) {
    const meta = article.querySelector('.meta')
    const time = this.doc.createElement('time')
    time.dateTime = createdAt
    time.textContent = timeFormat.format(new Date(createdAt))
    meta.replaceChildren(...(meta.textContent ? [`${meta.textContent} · `] : []), time)
  }

  /** User text is shown as typed; replies as Markdown, rendered safely. */
  setContent (article, text, markdown = false) {
    const body = article.querySelector('.body')
    if (markdown) body.replaceChildren(renderMarkdown(this.doc, text, this.doc.baseURI))
    else body.replaceChildren(...text.split('\n').flatMap((line, i) => (i === 0 ? [line] : [this.doc.createElement('br'), line])))
  }

  /** Deltas are drawn once per frame, however fast they come. */
  scheduleRender (pending) {
    if (pending.frame) return
    pending.frame = window.requestAnimationFrame(() => {
      pending.frame = undefined
      if (!pending.finished) this.setContent(pending.article, pending.text, true)
    })
  }
}
