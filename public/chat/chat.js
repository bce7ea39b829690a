// The SmallTalk chat page (DESIGN section 11): sessions, agents and their health, streamed replies,
// older history, the API key. Plain ES modules, no framework.

import { ApiError, createApi } from './api.js'
import { Conversation, HUES, hueOf } from './conversation.js'

const PAGE = 50
const KEY_STORAGE = 'smalltalk.apiKey'
const AGENT_REFRESH_MS = 30_000

const $ = (id) => document.getElementById(id)
const ui = {
  menu: $('menu-toggle'),
  sidebar: $('sidebar'),
  keyForm: $('key-form'),
  key: $('api-key'),
  newForm: $('new-form'),
  presetField: $('preset-field'),
  preset: $('preset'),
  agents: $('agents'),
  sessions: $('sessions'),
  moreSessions: $('more-sessions'),
  title: $('session-title'),
  deleteSession: $('delete-session'),
  alert: $('alert'),
  scroller: $('scroller'),
  older: $('older'),
  log: $('log'),
  composer: $('composer'),
  message: $('message'),
  send: $('send')
}

const state = {
  agents: new Map(),
  presets: [],
  session: undefined,
  /** The seq after which the oldest message shown comes: 0 when the whole history is shown. */
  oldestAfter: 0,
  loadingOlder: false,
  sending: false,
  sessionsCursor: undefined
}

const api = createApi(() => sessionStorage.getItem(KEY_STORAGE) ?? '')
const conversation = new Conversation(ui.log, {
  speakerName: (id) => state.agents.get(id)?.name ?? id ?? 'Agent',
  onError: (body, agent) => {
    if (body.turn === undefined) showError(new ApiError(body.statusCode ?? 500, body))
    else showAlert(turnFailure(body, agent))
  },
  hue: (id) => {
    const index = [...state.agents.keys()].indexOf(id)
    return index === -1 ? hueOf(id) : HUES[index % HUES.length]
  }
})

// ---- errors ----

function describe (error) {
  if (!(error instanceof ApiError)) return `Could not reach the server (${error.message}). Check your connection and try again.`
  const { status, body, retryAfter } = error
  const detail = body?.message ? ` (${body.message})` : ''
  const wait = retryAfter ? ` Try again in ${retryAfter} s.` : ' Try again in a moment.'
  if (status === 401) {
    return sessionStorage.getItem(KEY_STORAGE)
      ? `The server did not accept this API key${detail}. Paste a valid key in the API key field.`
      : 'This server needs an API key: paste yours in the API key field at the top.'
  }
  if (status === 409) return `This session is busy with another reply.${wait}`
  if (status === 410) return 'This session has ended (deleted or expired): start a new one.'
  if (status === 429) return `Too many requests${detail}.${wait}`
  if (status === 404) return `Not found${detail}.`
  if (status >= 500) return `The server could not answer: ${status} ${body?.error ?? ''}${detail}.${status === 503 ? wait : ''}`
  return `The request was refused: ${status}${detail}.`
}

/** A failed turn of a group round: the round itself goes on (DESIGN section 9). */
function turnFailure (body, agent) {
  const name = agent ? (state.agents.get(agent)?.name ?? agent) : 'the agent'
  const detail = body.message ? ` (${body.message})` : ''
  return `Turn ${body.turn}: ${name} could not answer${detail}. The round carries on without this turn.`
}

function showAlert (text) {
  ui.alert.textContent = text
  ui.alert.hidden = false
}

function showError (error) {
  showAlert(describe(error))
  if (error instanceof ApiError && error.status === 401) ui.key.focus()
}

function clearError () {
  ui.alert.hidden = true
  ui.alert.textContent = ''
}

/** Runs an action, showing its failure in the alert; resolves to its result, or undefined. */
async function guarded (action) {
  try {
    return await action()
  } catch (error) {
    showError(error)
    return undefined
  }
}

// ---- agents, presets, sessions ----

const BADGE = { healthy: 'healthy', degraded: 'degraded', down: 'down' }

async function loadAgents () {
  const { agents } = await api.get('/v1/agents')
  const checked = new Set([...ui.agents.querySelectorAll('input:checked')].map((input) => input.value))
  const first = state.agents.size === 0
  state.agents = new Map(agents.map((agent) => [agent.id, agent]))
  ui.agents.replaceChildren(...agents.map((agent, index) => {
    const item = document.createElement('li')
    const label = document.createElement('label')
    label.title = agent.description
    const box = document.createElement('input')
    box.type = 'checkbox'
    box.value = agent.id
    box.checked = first || checked.has(agent.id)
    const name = document.createElement('span')
    name.className = 'agent-name'
    name.textContent = agent.name
    name.style.setProperty('--hue', String(HUES[index % HUES.length]))
    const model = document.createElement('span')
    model.className = 'agent-model'
    model.textContent = `${agent.provider} · ${agent.model}`
    label.append(box, name, model)
    const badge = document.createElement('span')
    badge.className = `badge ${BADGE[agent.status] ?? 'unknown'}`
    badge.textContent = agent.status
    badge.title = `${agent.name} is ${agent.status}`
    item.append(label, badge)
    return item
  }))
}

async function loadPresets () {
  try {
    state.presets = (await api.get('/v1/groups')).groups
  } catch (error) {
    // A server without group conversations has no /v1/groups: no preset picker then.
    if (!(error instanceof ApiError) || error.status !== 404) throw error
    state.presets = []
  }
  ui.preset.replaceChildren(ui.preset.options[0], ...state.presets.map((preset) => {
    const option = document.createElement('option')
    option.value = preset.id
    option.textContent = preset.name
    option.title = preset.description ?? ''
    return option
  }))
  updateMode()
}

function mode () {
  return ui.newForm.elements.mode.value
}

function updateMode () {
  ui.presetField.hidden = mode() !== 'group' || state.presets.length === 0
}

function agentsLabel (session) {
  const names = session.agents.map((id) => state.agents.get(id)?.name ?? id)
  const shown = names.length > 3 ? `${names.slice(0, 3).join(', ')} +${names.length - 3}` : names.join(', ')
  return `${session.mode === 'group' ? 'Group: ' : ''}${shown || 'Session'}`
}

/** The first message names the session (metadata.title); until then, its agents do. */
function sessionLabel (session) {
  return typeof session.metadata?.title === 'string' ? session.metadata.title : agentsLabel(session)
}

const titleOf = (text) => {
  const line = text.trim().split('\n')[0]
  return line.length > 60 ? `${line.slice(0, 59)}…` : line
}

const dateFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })

function sessionItem (session) {
  const item = document.createElement('li')
  const link = document.createElement('a')
  link.href = `/chat?session=${encodeURIComponent(session.id)}`
  link.dataset.id = session.id
  const title = document.createElement('span')
  title.className = 'session-name'
  title.textContent = sessionLabel(session)
  const when = document.createElement('span')
  when.className = 'session-when'
  const agents = typeof session.metadata?.title === 'string' ? `${agentsLabel(session)} · ` : ''
  when.textContent = `${agents}${dateFormat.format(new Date(session.createdAt))} · ${session.messageCount} messages`
  link.append(title, when)
  if (state.session?.id === session.id) link.setAttribute('aria-current', 'page')
  item.append(link)
  return item
}

async function loadSessions (more = false) {
  const cursor = more && state.sessionsCursor ? `&cursor=${encodeURIComponent(state.sessionsCursor)}` : ''
  const page = await api.get(`/v1/sessions?limit=20${cursor}`)
  const items = page.sessions.map(sessionItem)
  if (more) ui.sessions.append(...items)
  else ui.sessions.replaceChildren(...items)
  state.sessionsCursor = page.nextCursor ?? undefined
  ui.moreSessions.hidden = !state.sessionsCursor
}

function markCurrentSession () {
  for (const link of ui.sessions.querySelectorAll('a')) {
    if (link.dataset.id === state.session?.id) link.setAttribute('aria-current', 'page')
    else link.removeAttribute('aria-current')
  }
}

// ---- the open session ----

function showSession (session) {
  state.session = session
  ui.title.textContent = session ? sessionLabel(session) : 'No session open'
  ui.deleteSession.hidden = !session
  markCurrentSession()
}

function setUrl (id, push) {
  const url = id ? `/chat?session=${encodeURIComponent(id)}` : '/chat'
  if (window.location.pathname + window.location.search === url) return
  if (push) window.history.pushState({ session: id }, '', url)
  else window.history.replaceState({ session: id }, '', url)
}

function scrollToEnd () {
  ui.scroller.scrollTop = ui.scroller.scrollHeight
}

async function openSession (id, push) {
  conversation.clear()
  state.oldestAfter = 0
  ui.older.hidden = true
  const session = await api.get(`/v1/sessions/${encodeURIComponent(id)}`).catch((error) => {
    showSession(undefined)
    throw error
  })
  showSession(session)
  setUrl(session.id, push)
  // seqs are gap-free from 1, so the newest page starts after messageCount - PAGE.
  const after = Math.max(0, session.messageCount - PAGE)
  const page = await api.get(`/v1/sessions/${encodeURIComponent(id)}/messages?after=${after}&limit=${PAGE}`)
  conversation.append(page.messages)
  state.oldestAfter = after
  ui.older.hidden = after === 0
  scrollToEnd()
}

async function loadOlder () {
  if (!state.session || state.oldestAfter === 0 || state.loadingOlder) return
  state.loadingOlder = true
  try {
    const after = Math.max(0, state.oldestAfter - PAGE)
    const page = await api.get(`/v1/sessions/${encodeURIComponent(state.session.id)}/messages?after=${after}&limit=${state.oldestAfter - after}`)
    // Keep the reader's place: what they were reading stays where it was on the screen.
    const fromBottom = ui.scroller.scrollHeight - ui.scroller.scrollTop
    conversation.prepend(page.messages)
    ui.scroller.scrollTop = ui.scroller.scrollHeight - fromBottom
    state.oldestAfter = after
    ui.older.hidden = after === 0
  } finally {
    state.loadingOlder = false
  }
}

async function createSession (title) {
  const agents = [...ui.agents.querySelectorAll('input:checked')].map((input) => input.value)
  let body
  if (mode() === 'group') {
    body = ui.preset.value ? { preset: ui.preset.value } : { mode: 'group', agents }
    if (!ui.preset.value && agents.length < 2) throw new ApiError(400, { message: 'a group needs at least two agents: tick them under Agents' })
  } else {
    body = agents.length > 0 ? { agents } : {}
  }
  if (title) body.metadata = { title }
  const session = await api.post('/v1/sessions', body)
  showSession(session)
  setUrl(session.id, true)
  conversation.clear()
  state.oldestAfter = 0
  ui.older.hidden = true
  await loadSessions()
  return session
}

/** A session opened empty is named by its first message (a lost race for the version leaves it unnamed). */
async function nameSession (title) {
  const { id, version, metadata } = state.session
  try {
    showSession(await api.patch(`/v1/sessions/${encodeURIComponent(id)}`, { metadata: { ...metadata, title } }, version))
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 412) throw error
  }
}

async function send () {
  const text = ui.message.value
  if (text.trim() === '' || state.sending) return
  state.sending = true
  ui.send.disabled = true
  try {
    if (!state.session) await createSession(titleOf(text))
    else if (state.session.messageCount === 0 && state.session.metadata?.title === undefined) await nameSession(titleOf(text))
    clearError()
    conversation.sending(text)
    ui.message.value = ''
    scrollToEnd()
    try {
      await api.stream(`/v1/sessions/${encodeURIComponent(state.session.id)}/messages`, { content: text }, (event, data) => {
        const atEnd = ui.scroller.scrollHeight - ui.scroller.scrollTop - ui.scroller.clientHeight < 80
        conversation.apply(event, data)
        if (atEnd) scrollToEnd()
      })
    } catch (error) {
      // Refused before anything was stored (busy, gone, no key): the text goes back in the box.
      if (error instanceof ApiError) {
        conversation.unsend()
        ui.message.value = text
      }
      throw error
    }
    void guarded(loadSessions)
  } finally {
    state.sending = false
    ui.send.disabled = false
  }
}

// ---- wiring ----

async function loadAll () {
  await loadAgents()
  await Promise.all([loadPresets(), loadSessions()])
  const id = new URLSearchParams(window.location.search).get('session')
  if (id) await openSession(id, false)
}

ui.keyForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const key = ui.key.value.trim()
  if (key) sessionStorage.setItem(KEY_STORAGE, key)
  else sessionStorage.removeItem(KEY_STORAGE)
  clearError()
  void guarded(loadAll)
})

ui.newForm.addEventListener('change', (event) => {
  if (event.target.name === 'mode') updateMode()
})

ui.newForm.addEventListener('submit', (event) => {
  event.preventDefault()
  clearError()
  void guarded(async () => {
    await createSession()
    closeMenu()
    ui.message.focus()
  })
})

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault()
  void guarded(send)
})

ui.message.addEventListener('keydown', (event) => {
  // Enter sends; Shift+Enter (and Enter while an input method composes) is a new line.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault()
    ui.composer.requestSubmit()
  }
})

ui.sessions.addEventListener('click', (event) => {
  const link = event.target.closest('a[data-id]')
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return
  event.preventDefault()
  clearError()
  closeMenu()
  void guarded(() => openSession(link.dataset.id, true))
})

ui.moreSessions.addEventListener('click', () => { void guarded(() => loadSessions(true)) })

ui.deleteSession.addEventListener('click', () => {
  if (!state.session) return
  const id = state.session.id
  void guarded(async () => {
    await api.delete(`/v1/sessions/${encodeURIComponent(id)}`)
    showSession(undefined)
    conversation.clear()
    ui.older.hidden = true
    setUrl(undefined, true)
    await loadSessions()
  })
})

ui.older.addEventListener('click', () => { void guarded(loadOlder) })
ui.scroller.addEventListener('scroll', () => {
  if (ui.scroller.scrollTop < 40 && state.oldestAfter > 0) void guarded(loadOlder)
}, { passive: true })

function closeMenu () {
  ui.sidebar.classList.remove('open')
  ui.menu.setAttribute('aria-expanded', 'false')
}

ui.menu.addEventListener('click', () => {
  const open = ui.sidebar.classList.toggle('open')
  ui.menu.setAttribute('aria-expanded', String(open))
})

window.addEventListener('popstate', () => {
  clearError()
  const id = new URLSearchParams(window.location.search).get('session')
  if (id) void guarded(() => openSession(id, false))
  else {
    showSession(undefined)
    conversation.clear()
  }
})

setInterval(() => {
  if (!document.hidden) void loadAgents().catch(() => undefined)
}, AGENT_REFRESH_MS)

ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? ''
void guarded(loadAll)
