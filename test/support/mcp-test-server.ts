import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { z } from 'zod'

// An MCP server for the tests, built with the SDK's server side so the real client runs against it:
// as a child process over stdio (`node --import tsx test/support/mcp-test-server.ts`) or in the test's
// own process over streamable HTTP on loopback. Its tools:
//   echo {text}, add {a, b}, slow {ms}, fail (an isError result), env {name} (the variable's value,
//   to prove which variables a stdio server was given), mixed (an image and a resource), grow (adds
//   the tool `grown`: the server announces tools/list_changed), calls (the number of calls per tool,
//   and slowConcurrentMax: the most slow calls at once, as JSON), and over stdio only crash (the
//   process exits in the middle of the call).

/** This file, as a stdio server's arguments to `node`. */
export const MCP_TEST_SERVER_ARGS = ['--import', 'tsx', fileURLToPath(import.meta.url)]

type Counts = Record<string, number>

const text = (value: string) => ({ content: [{ type: 'text' as const, text: value }] })

function buildServer (counts: Counts, withCrash: boolean): McpServer {
  const server = new McpServer({ name: 'smalltalk-test-tools', version: '1.0.0' })
  const counted = (name: string) => { counts[name] = (counts[name] ?? 0) + 1 }
  server.registerTool('echo', { description: 'Returns its text', inputSchema: { text: z.string() } }, async ({ text: value }) => {
    counted('echo')
    return text(value)
  })
  server.registerTool('add', { description: 'Adds two numbers', inputSchema: { a: z.number(), b: z.number() } }, async ({ a, b }) => {
    counted('add')
    return text(String(a + b))
  })
  // How many slow calls ran at the same time at most (counts.slowConcurrentMax): proves parallel calls.
  let slowRunning = 0
  server.registerTool('slow', { description: 'Answers after ms milliseconds', inputSchema: { ms: z.number() } }, async ({ ms }, extra) => {
    counted('slow')
    slowRunning++
    counts.slowConcurrentMax = Math.max(counts.slowConcurrentMax ?? 0, slowRunning)
    await sleep(ms, undefined, { signal: extra.signal }).catch(() => {})
    slowRunning--
    return text(`waited ${ms} ms`)
  })
  server.registerTool('fail', { description: 'Always an error result' }, async () => {
    counted('fail')
    return { ...text('the tool failed on purpose'), isError: true }
  })
  server.registerTool('env', { description: 'The value of an environment variable', inputSchema: { name: z.string() } }, async ({ name }) => {
    counted('env')
    return text(process.env[name] ?? '(not set)')
  })
  server.registerTool('mixed', { description: 'Text, an image and a resource' }, async () => {
    counted('mixed')
    return {
      content: [
        { type: 'text' as const, text: 'a picture:' },
        { type: 'image' as const, data: 'iVBORw0KGgo=', mimeType: 'image/png' },
        { type: 'resource' as const, resource: { uri: 'file:///notes.txt', text: 'notes' } }
      ]
    }
  })
  server.registerTool('grow', { description: 'Adds the tool "grown"' }, async () => {
    counted('grow')
    server.registerTool('grown', { description: 'Added by grow' }, async () => text('grown'))
    return text('added')
  })
  server.registerTool('calls', { description: 'Calls per tool so far, as JSON' }, async () => text(JSON.stringify(counts)))
  if (withCrash) {
    server.registerTool('crash', { description: 'Exits the server in the middle of the call' }, async () => {
      counted('crash')
      process.exit(3)
    })
  }
  return server
}

export interface HttpMcpServer {
  url: string
  /** Calls per tool, over every session. */
  counts: Counts
  /** The headers of the last request, to check that the configured ones are sent. */
  lastHeaders: () => IncomingMessage['headers']
  close: () => Promise<void>
}

/** The test server over streamable HTTP on a random loopback port; one MCP session per client. */
export async function startHttpMcpServer (): Promise<HttpMcpServer> {
  const counts: Counts = {}
  const sessions = new Map<string, StreamableHTTPServerTransport>()
  let lastHeaders: IncomingMessage['headers'] = {}
  const http: Server = createServer((req, res) => {
    lastHeaders = req.headers
    const id = req.headers['mcp-session-id']
    const existing = typeof id === 'string' ? sessions.get(id) : undefined
    if (existing) {
      void existing.handleRequest(req, res)
      return
    }
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (sessionId) => { sessions.set(sessionId, transport) }
    })
    transport.onclose = () => { if (transport.sessionId) sessions.delete(transport.sessionId) }
    void buildServer(counts, false).connect(transport).then(() => transport.handleRequest(req, res))
  })
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
  const { port } = http.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    counts,
    lastHeaders: () => lastHeaders,
    async close () {
      await Promise.all([...sessions.values()].map((transport) => transport.close()))
      http.closeAllConnections()
      await new Promise<void>((resolve) => http.close(() => resolve()))
    }
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await buildServer({}, true).connect(new StdioServerTransport())
}
