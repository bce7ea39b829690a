import { PassThrough } from 'node:stream'
import { once } from 'node:events'
import type { FastifyReply } from 'fastify'

/**
 * One Server-Sent Events response. It opens on the first event, so everything that fails before is
 * an ordinary HTTP error. Writes wait for the socket to drain (back-pressure); once the client is
 * gone they are dropped, so the producer never blocks on a dead connection.
 */
export class SseStream {
  private readonly stream = new PassThrough()
  private opened = false
  private closed = false

  constructor (private readonly reply: FastifyReply) {
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

  /** Writes one event; resolves once the socket can take more. */
  async send (event: string, id: string, data: unknown): Promise<void> {
    if (!this.write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`)) {
      await Promise.race([once(this.stream, 'drain'), once(this.stream, 'close')])
    }
  }

  /** Writes without waiting (for fan-out, where the caller watches backlogBytes instead). */
  write (frame: string): boolean {
    this.open()
    if (this.closed) return true
    return this.stream.write(frame)
  }

  comment (text: string): void {
    this.write(`: ${text}\n\n`)
  }

  end (): void {
    if (!this.stream.writableEnded) this.stream.end()
  }

  private markClosed (): void {
    this.closed = true
    this.stream.emit('drain')
  }
}
