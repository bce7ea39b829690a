import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'

/**
 * Lets `close()` finish as soon as the in-flight requests have. Node's `server.close()` waits for
 * every open connection, and Fastify closes only the idle keep-alive ones, once, when close starts.
 * Two kinds are left holding the server open until their client or a timeout (Fastify's keep-alive
 * of 72 s) ends them, which on SIGTERM means the forced exit: a connection whose response finishes
 * during the drain, and a connection that has not sent a request yet (a client's pre-connect or a
 * pool's spare socket), which Node never counts as idle. From preClose on, this closes each
 * connection the moment it has no request in flight.
 */
export function closeConnectionsWhenIdle(app: FastifyInstance): void {
  const inFlight = new Map<Socket, number>()
  let closing = false

  app.server.on('connection', (socket: Socket) => {
    inFlight.set(socket, 0)
    socket.once('close', () => inFlight.delete(socket))
  })
  app.server.on('request', (request, response) => {
    const socket = request.socket
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1)
    let done = false
    const finished = () => {
      if (done) return
      done = true
      const left = (inFlight.get(socket) ?? 1) - 1
      inFlight.set(socket, left)
      // 'finish' means the whole response was handed to the OS: nothing is cut by closing now.
      if (closing && left === 0) socket.destroy()
    }
    response.once('finish', finished)
    response.once('close', finished)
  })
  app.addHook('preClose', async () => {
    closing = true
    for (const [socket, requests] of inFlight) if (requests === 0) socket.destroy()
  })
}
