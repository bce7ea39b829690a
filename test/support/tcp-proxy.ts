import { createServer, connect, type Server, type Socket } from 'node:net'

/**
 * A loopback TCP proxy that a test can break on purpose: `cut()` drops every connection and refuses
 * new ones (a dependency that went away), `blackhole()` keeps accepting but forwards nothing (a
 * dependency that hangs), `restore()` heals it. It lets a test take "Redis" away from one service
 * without stopping the real server that other test files share.
 */
export class TcpProxy {
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private mode: 'forward' | 'blackhole' = 'forward'
  port = 0

  constructor (private readonly targetHost: string, private readonly targetPort: number) {}

  static forUrl (url: string): TcpProxy {
    const parsed = new URL(url)
    return new TcpProxy(parsed.hostname, Number(parsed.port))
  }

  /** Listens (on a given port, to come back on the same one after a cut). */
  async start (port = this.port): Promise<number> {
    const server = createServer((client) => this.accept(client))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => resolve())
    })
    this.server = server
    const address = server.address()
    this.port = typeof address === 'object' && address ? address.port : port
    return this.port
  }

  /** The same connection URL (user, database...), pointed at the proxy instead of the server. */
  rewrite (url: string): string {
    const parsed = new URL(url)
    parsed.hostname = '127.0.0.1'
    parsed.port = String(this.port)
    return parsed.toString()
  }

  private accept (client: Socket): void {
    this.sockets.add(client)
    client.on('close', () => this.sockets.delete(client))
    client.on('error', () => client.destroy())
    if (this.mode === 'blackhole') return
    const upstream = connect(this.targetPort, this.targetHost)
    this.sockets.add(upstream)
    upstream.on('close', () => {
      this.sockets.delete(upstream)
      client.destroy()
    })
    upstream.on('error', () => upstream.destroy())
    client.on('close', () => upstream.destroy())
    client.pipe(upstream)
    upstream.pipe(client)
  }

  /** Drops every open connection and stops listening: connects are refused. */
  async cut (): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    const server = this.server
    this.server = undefined
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  /** Drops open connections; new ones are accepted but nothing is forwarded either way. */
  async blackhole (): Promise<void> {
    this.mode = 'blackhole'
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    if (!this.server) await this.start()
  }

  async restore (): Promise<void> {
    this.mode = 'forward'
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    if (!this.server) await this.start()
  }

  async close (): Promise<void> {
    await this.cut()
  }
}
