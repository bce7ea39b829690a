import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { systemClock } from '../../src/clock.js'
import { DomainError } from '../../src/domain-errors.js'
import { usageReport } from '../../src/limits/usage.js'
import { errorResponses } from '../sessions/schemas.js'
import { UsageQuery, UsageReport } from './schemas.js'

/** The longest range one request may ask for: a report is one index range scan, bounded by this. */
const MAX_DAYS = 366

const isRealDay = (day: string) => {
  const ms = Date.parse(`${day}T00:00:00Z`)
  return Number.isFinite(ms) && new Date(ms).toISOString().startsWith(day)
}

/** GET /v1/usage: the caller's tenant's tokens and replies, from PostgreSQL (DESIGN section 12). */
const usage: FastifyPluginAsyncTypebox<{ clock?: typeof systemClock }> = async (fastify, opts) => {
  const clock = opts.clock ?? systemClock
  fastify.get(
    '/',
    {
      schema: {
        summary: 'Token usage of the caller\'s tenant',
        description: `Input and output tokens and replies of the caller's tenant over the UTC days \`from\` to \`to\` (both included; default: today), as totals and as rows per day, agent or model. Counted from the usage stored with every reply, the same figures the daily token budget (\`TOKEN_BUDGET_PER_DAY\`) is checked against. At most ${MAX_DAYS} days per request.`,
        tags: ['usage'],
        security: [{ bearerAuth: [] }],
        querystring: UsageQuery,
        response: { 200: UsageReport, ...errorResponses(400, 401, 503) }
      }
    },
    async (request) => {
      const today = new Date(clock.now()).toISOString().slice(0, 10)
      const from = request.query.from ?? request.query.to ?? today
      const to = request.query.to ?? (request.query.from ? from : today)
      for (const [field, day] of [['from', from], ['to', to]] as const) {
        if (!isRealDay(day)) throw new DomainError('invalid', `${field} is not a calendar day: ${day}`, { code: 'INVALID_DATE', details: [{ field: `/${field}` }] })
      }
      const days = (Date.parse(to) - Date.parse(from)) / 86_400_000 + 1
      if (days < 1) throw new DomainError('invalid', '`to` must not be before `from`', { code: 'INVALID_RANGE', details: [{ field: '/to' }] })
      if (days > MAX_DAYS) throw new DomainError('invalid', `at most ${MAX_DAYS} days per request (asked for ${days})`, { code: 'INVALID_RANGE', details: [{ field: '/to' }] })
      return usageReport(fastify.pg.pool, request.tenant, from, to, request.query.groupBy)
    }
  )
}

export default usage
