import { createHash } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ConfigError } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook for the /v1 routes: 401 without a valid bearer key, else sets request.tenant. */
    authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
  interface FastifyRequest {
    tenant: string
  }
}

/** The tenant of the open mode (no API_KEYS): every caller shares it. */
export const OPEN_TENANT = 'default'

const digest = (key: string) => createHash('sha256').update(key).digest('hex')

/**
 * Parses API_KEYS ("key:tenant,key:tenant"); keys are kept only as SHA-256 digests. A bad entry is a
 * ConfigError naming its position, never its text (the keys are secrets).
 */
export function parseApiKeys (value: string): Map<string, string> {
  const tenants = new Map<string, string>()
  for (const [index, pair] of value.split(',').map((p) => p.trim()).filter(Boolean).entries()) {
    const separator = pair.lastIndexOf(':')
    const key = pair.slice(0, separator).trim()
    const tenant = pair.slice(separator + 1).trim()
    if (separator <= 0 || !key || !tenant) {
      throw new ConfigError(`Invalid configuration: API_KEYS entry ${index + 1} must be key:tenant`)
    }
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(tenant)) {
      throw new ConfigError(`Invalid configuration: API_KEYS entry ${index + 1} has an invalid tenant (letters, digits, _ . - only)`)
    }
    tenants.set(digest(key), tenant)
  }
  return tenants
}

/**
 * Bearer API keys (API_KEYS). Lookup is by the key's digest, so the comparison time says nothing
 * about how much of a key was right. With no keys the API runs open, as one tenant.
 */
export default fp(
  async function auth (fastify) {
    const tenants = parseApiKeys(fastify.config.API_KEYS)
    fastify.decorateRequest('tenant', OPEN_TENANT)
    fastify.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply) {
      if (tenants.size === 0) return
      const header = request.headers.authorization
      const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
      const tenant = match?.[1] ? tenants.get(digest(match[1])) : undefined
      if (!tenant) {
        reply.header('www-authenticate', 'Bearer realm="smalltalk"')
        throw fastify.httpErrors.unauthorized(
          header ? 'Invalid API key' : 'Missing API key: send Authorization: Bearer <key>'
        )
      }
      request.tenant = tenant
    })
  },
  { name: 'auth', dependencies: ['config', '@fastify/sensible'] }
)
