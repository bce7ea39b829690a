import { createServer, connect, type Socket } from 'node:net'
import type { Test } from 'tap'

/**
 * A loopback TCP proxy that can hang without dropping anything: `freeze()` holds every byte either way
 * on the connections it has (a Redis that stalls, or a silent network partition: the client still
 * believes it is connected, so its commands wait for their timeout), `thaw()` forwards what it held,
 * in order, and carries on. Closed at the end of the test.
 */
export async function freezableProxy (t: Test, target: string): Promise<{ url: string; freeze(): void; thaw(): void }> {
  const parsed = new URL(target)
  const [host, port] = [parsed.hostname, Number(parsed.port)]
  let frozen = false
  const held: Array<() => void> = []
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = connect(port, host)
    sockets.add(client).add(upstream)
    const forward = (to: Socket) => (chunk: Buffer) => {
      const send = () => to.writable && to.write(chunk)
      if (frozen) held.push(send)
      else send()
    }
    client.on('data', forward(upstream))
    upstream.on('data', forward(client))
    for (const socket of [client, upstream]) {
      socket.on('error', () => socket.destroy())
      socket.on('close', () => {
        client.destroy()
        upstream.destroy()
        sockets.delete(socket)
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  parsed.hostname = '127.0.0.1'
  parsed.port = String((server.address() as { port: number }).port)
  return {
    url: parsed.toString(),
    freeze: () => {
      frozen = true
    },
    thaw: () => {
      frozen = false
      for (const send of held.splice(0)) send()
    }
  }
}
