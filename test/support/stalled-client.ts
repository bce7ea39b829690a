import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import type { ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'

/**
 * An HTTP client on a raw TCP socket that sends its request and then reads nothing: the kernel's
 * buffers fill and the server sees a client that stopped reading. `readAll()` starts reading and
 * returns everything that arrives until the server closes the connection.
 */
export async function stalledClient (port: number, request: string): Promise<{ socket: Socket; readAll(): Promise<Buffer> }> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.pause()
  socket.write(request)
  return {
    socket,
    async readAll () {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      const closed = once(socket, 'close')
      socket.resume()
      await closed
      return Buffer.concat(chunks)
    }
  }
}

/** The body of a chunked HTTP/1.1 response, up to where it was cut off. */
export function dechunk (response: Buffer): string {
  let at = response.indexOf('\r\n\r\n') + 4
  const body: Buffer[] = []
  for (;;) {
    const lineEnd = response.indexOf('\r\n', at)
    if (lineEnd < 0) break
    const size = Number.parseInt(response.toString('latin1', at, lineEnd), 16)
    if (!(size > 0)) break
    const start = lineEnd + 2
    body.push(response.subarray(start, Math.min(start + size, response.length)))
    if (start + size > response.length) break
    at = start + size + 2
  }
  return Buffer.concat(body).toString()
}

export interface WatchedResponse {
  raw: ServerResponse
  /** Bytes of this response still in the server process: the stream's buffers, the response's and the socket's. */
  bufferedBytes(): number
  closed: boolean
}

/** The streamed responses of `app` (register before it is ready), as the server side sees them. */
export function watchStreamedResponses (app: FastifyInstance): WatchedResponse[] {
  const watched: WatchedResponse[] = []
  app.addHook('onSend', async (_request, reply, payload) => {
    const stream = payload as Readable & { writableLength?: number }
    if (typeof stream?.pipe !== 'function') return payload
    const entry: WatchedResponse = {
      raw: reply.raw,
      bufferedBytes: () => (stream.writableLength ?? 0) + stream.readableLength + reply.raw.writableLength,
      closed: false
    }
    reply.raw.once('close', () => {
      entry.closed = true
    })
    watched.push(entry)
    return payload
  })
  return watched
}
