/** A part of a tools/call result's `content`, as the MCP SDK types it (only the fields read here). */
export interface ResultPart {
  type: string
  text?: string
  mimeType?: string
  uri?: string
  resource?: { uri?: string }
}

export interface ToolResult {
  content?: ResultPart[]
  structuredContent?: unknown
}

/**
 * The text a model is given for a tool's result: text parts joined with newlines, every other part
 * named by its kind (the model cannot read bytes, and an image's base64 would only fill the context),
 * the structured content as JSON when there is no text at all (the caller cuts it at the limit).
 */
export function resultText (result: ToolResult): string {
  const parts = (result.content ?? []).map(describePart)
  const hasText = (result.content ?? []).some((part) => part.type === 'text')
  if (!hasText && result.structuredContent !== undefined) parts.unshift(JSON.stringify(result.structuredContent))
  return parts.join('\n')
}

function describePart (part: ResultPart): string {
  switch (part.type) {
    case 'text': return part.text ?? ''
    case 'image':
    case 'audio': return `[${part.type} ${part.mimeType ?? 'unknown type'}]`
    case 'resource': return `[resource ${part.resource?.uri ?? 'without uri'}]`
    case 'resource_link': return `[resource ${part.uri ?? 'without uri'}]`
    default: return `[${part.type}]`
  }
}

/** `text` at most `maxChars` long, plus a marker that says how much was left out. */
export function cut (text: string, maxChars: number): string {
  if (text.length <= maxChars) return text
  return `${text.slice(0, maxChars)}…[cut: ${text.length - maxChars} more characters]`
}
