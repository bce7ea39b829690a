// A small Markdown renderer for replies, safe by construction: it builds DOM nodes and puts every
// piece of the text in with createTextNode, so no markup in a model's answer is ever parsed as HTML.
// Blocks: paragraphs, fenced code, headings, lists, quotes, rules. Inline: code, bold, italic, links
// (http, https and mailto only).

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+-]*)\s*$/
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/
const QUOTE = /^\s*>\s?(.*)$/
const BULLET = /^\s*[-*+]\s+(.*)$/
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/
const BLANK = /^\s*$/

const INLINE = new RegExp([
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1, 2: code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3: bold
  /__(?=\S)([\s\S]*?\S)__/.source, // 4: bold
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 5: italic
  /(?<![\p{L}\p{N}])_(?=\S)([\s\S]*?\S)_(?![\p{L}\p{N}])/.source, // 6: italic
  /\[([^\]\n]+)\]\(([^()\s]+)\)/.source, // 7, 8: link
  /(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])/.source // 9: bare URL
].join('|'), 'gu')

const CLOSING_FENCE = /^\s*(`{3,}|~{3,})\s*$/

/** A fence closes with the same character, at least as many times. */
function closesFence (line, marker) {
  const match = CLOSING_FENCE.exec(line)
  return match !== null && match[1][0] === marker[0] && match[1].length >= marker.length
}

const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:'])

/** The URL if it is one a reader may follow (never javascript:, data: and the like), else null. */
export function safeHref (href, base) {
  try {
    const url = new URL(href, base)
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null
  } catch {
    return null
  }
}

/** Splits text into blocks: { type, text | lines | items | blocks | lang | level | start }. */
export function parseBlocks (text) {
  const lines = text.replace(/\r\n?/g, '\n').split('\n')
  const blocks = []
  let i = 0
  while (i < lines.length) {
    const line = lines[i]
    let match
    if (BLANK.test(line)) {
      i++
    } else if ((match = FENCE.exec(line))) {
      const marker = match[1]
      const body = []
      i++
      while (i < lines.length && !closesFence(lines[i], marker)) body.push(lines[i++])
      i++ // the closing fence (an unclosed one, as while streaming, runs to the end)
      blocks.push({ type: 'code', lang: match[2], text: body.join('\n') })
    } else if ((match = HEADING.exec(line))) {
      blocks.push({ type: 'heading', level: match[1].length, text: match[2] })
      i++
    } else if (RULE.test(line)) {
      blocks.push({ type: 'rule' })
      i++
    } else if (QUOTE.test(line)) {
      const quoted = []
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        quoted.push(match[1])
        i++
      }
      blocks.push({ type: 'quote', blocks: parseBlocks(quoted.join('\n')) })
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line)
      const pattern = ordered ? NUMBERED : BULLET
      const items = []
      const start = ordered ? Number(NUMBERED.exec(line)[1]) : 1
      while (i < lines.length && !BLANK.test(lines[i])) {
        if ((match = pattern.exec(lines[i]))) items.push(match[ordered ? 2 : 1])
        else if (/^\s+\S/.test(lines[i]) && items.length > 0) items[items.length - 1] += '\n' + lines[i].trim()
        else break
        i++
      }
      blocks.push({ type: ordered ? 'ordered' : 'bullets', start, items })
    } else {
      const paragraph = []
      while (i < lines.length && !BLANK.test(lines[i]) && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) && !QUOTE.test(lines[i]) && !(paragraph.length > 0 && (BULLET.test(lines[i]) || NUMBERED.test(lines[i])))) {
        paragraph.push(lines[i])
        i++
      }
      blocks.push({ type: 'paragraph', text: paragraph.join('\n') })
    }
  }
  return blocks
}

/** Appends the inline content of `text` to `parent`: text nodes and a few formatting elements. */
function appendInline (doc, parent, text, base) {
  let last = 0
  for (const match of text.matchAll(INLINE)) {
    appendText(doc, parent, text.slice(last, match.index))
    last = match.index + match[0].length
    const [, , code, bold1, bold2, italic1, italic2, label, href, bare] = match
    if (code !== undefined) {
      appendElement(doc, parent, 'code').append(doc.createTextNode(code))
    } else if (bold1 !== undefined || bold2 !== undefined) {
      appendInline(doc, appendElement(doc, parent, 'strong'), bold1 ?? bold2, base)
    } else if (italic1 !== undefined || italic2 !== undefined) {
      appendInline(doc, appendElement(doc, parent, 'em'), italic1 ?? italic2, base)
    } else {
      const target = safeHref(href ?? bare, base)
      if (target === null) {
        appendText(doc, parent, match[0])
        continue
      }
      const link = appendElement(doc, parent, 'a')
      link.href = target
      link.rel = 'noopener noreferrer nofollow'
      link.target = '_blank'
      if (label !== undefined) appendInline(doc, link, label, base)
      else link.append(doc.createTextNode(bare))
    }
  }
  appendText(doc, parent, text.slice(last))
}

/** Text with its line breaks kept as <br>. */
function appendText (doc, parent, text) {
  text.split('\n').forEach((piece, index) => {
    if (index > 0) parent.append(doc.createElement('br'))
    if (piece !== '') parent.append(doc.createTextNode(piece))
  })
}

function appendElement (doc, parent, tag) {
  const element = doc.createElement(tag)
  parent.append(element)
  return element
}

function appendBlocks (doc, parent, blocks, base) {
  for (const block of blocks) {
    if (block.type === 'code') {
      const code = appendElement(doc, appendElement(doc, parent, 'pre'), 'code')
      if (block.lang) code.dataset.lang = block.lang
      code.append(doc.createTextNode(block.text))
    } else if (block.type === 'heading') {
      // Replies sit under the page's own headings: # is rendered as h3, and so on.
      appendInline(doc, appendElement(doc, parent, `h${Math.min(6, block.level + 2)}`), block.text, base)
    } else if (block.type === 'rule') {
      appendElement(doc, parent, 'hr')
    } else if (block.type === 'quote') {
      appendBlocks(doc, appendElement(doc, parent, 'blockquote'), block.blocks, base)
    } else if (block.type === 'bullets' || block.type === 'ordered') {
      const list = appendElement(doc, parent, block.type === 'ordered' ? 'ol' : 'ul')
      if (block.type === 'ordered' && block.start !== 1) list.start = block.start
      for (const item of block.items) appendInline(doc, appendElement(doc, list, 'li'), item, base)
    } else {
      appendInline(doc, appendElement(doc, parent, 'p'), block.text, base)
    }
  }
}

/** The rendered text as a DocumentFragment of `doc` (links resolved against `base`). */
export function renderMarkdown (doc, text, base) {
  const fragment = doc.createDocumentFragment()
  appendBlocks(doc, fragment, parseBlocks(text), base)
  return fragment
}
