// A reply's tool calls (DESIGN section 14), shown before its text: one <details> per call, collapsed
// to a one-line summary (tool, server, state), open to the arguments and the result. Tool output is
// untrusted: every piece of it is set as text (textContent), never parsed as HTML or Markdown.

const STATES = {
  running: 'running…',
  ok: '✓ done',
  error: '✗ error',
  missing: '– no result'
}

/** The container of an article's tool calls, made (before its body) on first use. */
function toolsOf (article) {
  let tools = article.querySelector(':scope > .tools')
  if (!tools) {
    tools = article.ownerDocument.createElement('div')
    tools.className = 'tools'
    article.querySelector(':scope > .body').before(tools)
  }
  return tools
}

function element (doc, tag, className, text) {
  const node = doc.createElement(tag)
  node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

function pretty (args) {
  try {
    return JSON.stringify(args ?? {}, null, 2)
  } catch {
    return String(args)
  }
}

/**
 * Adds a call to the article, shown as running until its result comes: `{ callId, tool, server,
 * arguments }` (server empty when the agent has no such tool). Returns the call's element.
 */
export function addToolCall (article, call) {
  const doc = article.ownerDocument
  const details = element(doc, 'details', 'tool-call running')
  details.dataset.callId = call.callId
  const summary = doc.createElement('summary')
  const icon = element(doc, 'span', 'tool-icon', 'Tool')
  icon.setAttribute('aria-hidden', 'true')
  const name = element(doc, 'span', 'tool-name', call.tool)
  const server = element(doc, 'span', 'tool-server', call.server ? `· ${call.server}` : '· no such tool')
  const state = element(doc, 'span', 'tool-state', STATES.running)
  summary.append(icon, name, ' ', server, ' ', state)

  const args = element(doc, 'pre', 'tool-args', pretty(call.arguments))
  const resultLabel = element(doc, 'p', 'tool-label result-label', 'Result')
  const result = element(doc, 'pre', 'tool-result', 'Waiting for the result…')
  for (const [box, what] of [[args, 'Arguments'], [result, 'Result']]) {
    // Long text scrolls inside its box: focusable, so the keyboard can scroll it too.
    box.tabIndex = 0
    box.setAttribute('aria-label', `${what} of ${call.tool}`)
  }
  const detail = element(doc, 'div', 'tool-detail')
  detail.append(element(doc, 'p', 'tool-label', 'Arguments'), args, resultLabel, result)
  details.append(summary, detail)
  toolsOf(article).append(details)
  return details
}

/** The call's result `{ isError, content }`: its state in the summary, the text in its box. */
export function setToolResult (details, { isError, content }) {
  const kind = isError ? 'error' : 'ok'
  details.classList.remove('running')
  details.classList.add(kind)
  details.querySelector('.tool-state').textContent = STATES[kind]
  details.querySelector('.result-label').textContent = isError ? 'Error' : 'Result'
  const result = details.querySelector('.tool-result')
  result.textContent = content
  result.setAttribute('aria-label', `${isError ? 'Error' : 'Result'} of ${details.querySelector('.tool-name').textContent}`)
}

/** The reply ended before these calls' results came (it failed): they say so instead of running on. */
export function abandonToolCalls (article) {
  for (const details of article.querySelectorAll(':scope > .tools > .tool-call.running')) {
    details.classList.replace('running', 'missing')
    details.querySelector('.tool-state').textContent = STATES.missing
    details.querySelector('.tool-result').textContent = 'No result: the reply ended first.'
  }
}

/** A stored `role: "tool"` message, as the call and its result. */
export function addStoredToolCall (article, message) {
  const meta = message.metadata ?? {}
  const details = addToolCall(article, { callId: meta.callId, tool: meta.tool ?? 'tool', server: meta.server, arguments: meta.arguments })
  setToolResult(details, { isError: meta.isError === true, content: message.content })
  details.dataset.id = message.id
  return details
}

/**
 * The running call of that id: the latest, as ids are only unique within a model step (a provider
 * may number each step's calls from 1 again).
 */
export function findRunningToolCall (scope, callId) {
  const calls = [...scope.querySelectorAll('.tool-call.running')].filter((details) => details.dataset.callId === callId)
  return calls.at(-1)
}
