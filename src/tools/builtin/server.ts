import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js'
import { z } from 'zod'
import { calculate, CalculatorError, formatResult } from './calculator.js'
import { currentTime } from './current-time.js'

// The MCP server shipped with the service (agents/default.yaml: `builtin`), over stdio: the service
// starts it as `node dist/src/tools/builtin/server.js`. Its tools need no key and no network.

const server = new McpServer({ name: 'smalltalk-builtin', version: '1.0.0' })

const failure = (message: string) => ({ content: [{ type: 'text' as const, text: message }], isError: true })

server.registerTool(
  'calculator',
  {
    description: 'Evaluates an arithmetic expression: + - * / % ^ (power), parentheses, unary minus and decimals, e.g. "(2 + 3) * -1.5 ^ 2"',
    inputSchema: { expression: z.string().describe('The arithmetic expression') }
  },
  async ({ expression }) => {
    try {
      return { content: [{ type: 'text' as const, text: formatResult(calculate(expression)) }] }
    } catch (err) {
      if (err instanceof CalculatorError) return failure(`Cannot calculate "${expression}": ${err.message}`)
      throw err
    }
  }
)

server.registerTool(
  'current_time',
  {
    description: 'The current date and time, as ISO 8601 with the offset of the time zone (default UTC)',
    inputSchema: { timeZone: z.string().optional().describe('An IANA time zone such as Europe/Paris; default UTC') }
  },
  async ({ timeZone }) => {
    try {
      const now = currentTime(timeZone ?? 'UTC', new Date())
      return { content: [{ type: 'text' as const, text: `${now.iso} (${now.timeZone})` }] }
    } catch (err) {
      return failure((err as Error).message)
    }
  }
)

await server.connect(new StdioServerTransport())
