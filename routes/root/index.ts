import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { SERVICE_VERSION } from '../../src/paths.js'

const ServiceInfo = Type.Object({
  name: Type.String(),
  version: Type.String(),
  status: Type.Literal('running'),
  environment: Type.String(),
  timestamp: Type.String({ format: 'date-time' })
})

const root: FastifyPluginAsyncTypebox = async (fastify) => {
  const environment = fastify.config.NODE_ENV
  fastify.get(
    '/',
    { schema: { summary: 'Service identity', tags: ['service'], response: { 200: ServiceInfo } } },
    async () => ({
      name: 'SmallTalk Server',
      version: SERVICE_VERSION,
      status: 'running' as const,
      environment,
      timestamp: new Date().toISOString()
    })
  )
}

export default root
