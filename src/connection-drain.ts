import type { ServerResponse } from 'node:http'
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
export function closeConnectionsWhenIdle (app: FastifyInstance): void {
  // Each open connection and its latest response (undefined before its first request). Responses on
  // one connection finish in order, so the latest one finished means the connection is idle. The
  // request path pays one Map write; the listeners are added only once the server is closing.
  const latest = new Map<Socket, ServerResponse | undefined>()
  app.server.on('connection', (socket: Socket) => {
    latest.set(socket, undefined)
    socket.once('close', () => latest.delete(socket))
  })
  app.server.on('request', (request, response) => {
    latest.set(request.socket, response)
  })
  app.addHook('preClose', async () => {
    for (const socket of latest.keys()) closeWhenIdle(socket)
  })

  // 'finish': the whole response was handed to the OS, so nothing is cut by closing then. A request
  // that arrives on the connection meanwhile is answered 503 (return503OnClosing) first.
  function closeWhenIdle (socket: Socket): void {
    const response = latest.get(socket)
    if (!response || response.writableFinished) socket.destroy()
    else response.once('finish', () => closeWhenIdle(socket))
  }
}
