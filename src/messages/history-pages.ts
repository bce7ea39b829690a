import { LRUCache } from 'lru-cache'

interface KeptPage {
  /** The session's newest seq when the page was built: the page is current while it still is. */
  lastSeq: number
  body: Buffer
}

/**
 * Finished history-read responses, kept in this replica's memory and bounded in bytes (least
 * recently used first out). A page of history is immutable for a given newest seq of its session
 * (messages are never edited, and a session that ends is refused as gone before any page is looked up), so
 * a kept page is served only when the session record just read, from Redis or PostgreSQL, still has
 * the seq the page was built at. No replica can serve another replica's stale page, and a client
 * polling a conversation costs one small record read instead of fetching and copying the messages.
 */
export class HistoryPages {
  private readonly pages: LRUCache<string, KeptPage> | undefined

  constructor (maxBytes: number) {
    this.pages = maxBytes > 0 ? new LRUCache<string, KeptPage>({ maxSize: maxBytes, sizeCalculation: (page, key) => page.body.length + key.length + 64 }) : undefined
  }

  get enabled (): boolean {
    return this.pages !== undefined
  }

  /** Whether a response for this window is kept (current or not). */
  has (sessionId: string, after: number, limit: number): boolean {
    return this.pages?.has(pageKey(sessionId, after, limit)) ?? false
  }

  /** The kept response for this window, if it was built at `lastSeq`. */
  get (sessionId: string, after: number, limit: number, lastSeq: number): Buffer | undefined {
    const page = this.pages?.get(pageKey(sessionId, after, limit))
    return page?.lastSeq === lastSeq ? page.body : undefined
  }

  set (sessionId: string, after: number, limit: number, lastSeq: number, body: Buffer): void {
    this.pages?.set(pageKey(sessionId, after, limit), { lastSeq, body })
  }

  /** Bytes held, as the budget counts them. */
  get bytes (): number {
    return this.pages?.calculatedSize ?? 0
  }
}

const pageKey = (sessionId: string, after: number, limit: number) => `${sessionId}:${after}:${limit}`
