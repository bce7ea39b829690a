import { PassThrough } from 'node:stream'
import { once } from 'node:events'
import type { FastifyReply } from 'fastify'

/**
 * What one SSE response may hold in memory for a client that reads slower than it is written to.
 * A reply is usually far smaller, so its producer does not wait for the client (and never longer
 * than the drain timeout); the event stream writes its resume as this drains, and drops a live
 * subscriber that falls further behind.
 */
export const SSE_MAX_BUFFERED_BYTES = 1_048_576

/**
 * One Server-Sent Events response. It opens on the first event, so everything that fails before is
 * an ordinary HTTP error. Up to SSE_MAX_BUFFERED_BYTES are buffered for a slow client; past that,
 * writes wait for the socket to drain (back-pressure). A client that takes nothing for the drain
 * timeout (SSE_DRAIN_TIMEOUT_MS) while output waits for it is disconnected: it can resume with
 * Last-Event-ID, and a producer waiting on it goes on. Once the client is gone, writes are dropped,
 * so the producer never blocks on a dead connection.
 */
export class SseStream {
  private readonly stream = new PassThrough({ writableHighWaterMark: SSE_MAX_BUFFERED_BYTES })
  private readonly drainTimeoutMs: number
  private opened = false
  private closed = false
  private drainTimer: NodeJS.Timeout | undefined
  /** Bytes the socket had handed to the kernel when the drain timer was armed. */
  private takenAtArming = 0

  constructor (private readonly reply: FastifyReply) {
    this.drainTimeoutMs = reply.server.config.SSE_DRAIN_TIMEOUT_MS
    // The response's 'close' (not the request's, which fires once its body is read): the client is gone.
    reply.raw.once('close', () => this.markClosed())
  }

  get isOpen (): boolean {
    return this.opened
  }

  get isClosed (): boolean {
    return this.closed
  }

  /** Bytes written but not yet taken by the socket: a measure of how far behind the client is. */
  get backlogBytes (): number {
    return this.stream.writableLength
  }

  open (): void {
    if (this.opened) return
    this.opened = true
    this.reply
      .code(200)
      .header('content-type', 'text/event-stream; charset=utf-8')
      .header('cache-control', 'no-cache, no-transform')
      .header('x-accel-buffering', 'no')
      .send(this.stream)
  }

  /** Writes one event; resolves at once, or once the socket has taken the buffer (or the client is gone). */
  send (event: string, id: string, data: unknown): Promise<void> {
    return this.writeWhenDrained(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
  }

  /** Writes a frame as send does. */
  async writeWhenDrained (frame: string): Promise<void> {
    if (!this.write(frame)) await Promise.race([once(this.stream, 'drain'), once(this.stream, 'close')])
  }

  /** Writes without waiting (for fan-out, where the caller watches backlogBytes instead). */
  write (frame: string): boolean {
    this.open()
    if (this.closed || this.stream.writableEnded) return true
    const ok = this.stream.write(frame)
    this.watchDrain()
    return ok
  }

  comment (text: string): void {
    this.write(`: ${text}\n\n`)
  }

  end (): void {
    if (this.stream.writableEnded) return
    this.stream.end()
    this.watchDrain()
  }

  /** Drops the connection at once, whatever is still buffered (a client too far behind). */
  abort (): void {
    this.markClosed()
    this.reply.raw.destroy()
  }

  /** Output still in this process: the stream's buffers and the response's (socket included). */
  private pendingBytes (): number {
    return this.stream.writableLength + this.stream.readableLength + this.reply.raw.writableLength
  }

  private taken (): number {
    const socket = this.reply.raw.socket
    return socket ? socket.bytesWritten - socket.writableLength : 0
  }

  /** Checks, once per drain timeout, that a client with output waiting took some of it meanwhile. */
  private watchDrain (): void {
    if (this.drainTimer || this.closed) return
    this.takenAtArming = this.taken()
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined
      if (this.closed || this.pendingBytes() === 0) return
      if (this.taken() > this.takenAtArming) {
        this.watchDrain()
        return
      }
      this.reply.log.info({ pendingBytes: this.pendingBytes(), drainTimeoutMs: this.drainTimeoutMs }, 'SSE client took nothing within the drain timeout: disconnected (it can resume with Last-Event-ID)')
      this.abort()
    }, this.drainTimeoutMs)
    this.drainTimer.unref()
  }

  private markClosed (): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.drainTimer)
    this.drainTimer = undefined
    this.stream.emit('drain')
  }
}
