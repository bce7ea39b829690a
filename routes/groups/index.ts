import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { STRATEGIES } from '../../src/groups/group-settings.js'
import { ErrorBody } from '../sessions/schemas.js'

const GroupPreset = Type.Object({
  id: Type.String(),
  name: Type.String(),
  description: Type.String(),
  agents: Type.Array(Type.String()),
  strategy: Type.Enum(STRATEGIES),
  maxTurns: Type.Integer(),
  manager: Type.Optional(Type.String()),
  terminationKeyword: Type.Optional(Type.String()),
  allowRepeat: Type.Optional(Type.Boolean())
})

/** The group presets of the agents manifest (`groups:`). Registered with prefix /v1/groups. */
const groupRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const groups = [...fastify.groupPresets.values()]
  fastify.get(
    '/',
    {
      schema: {
        summary: 'List the group presets',
        description: 'Group presets of the agents manifest: `POST /v1/sessions { "preset": "<id>" }` creates a group session with their agents and settings.',
        tags: ['groups'],
        security: [{ bearerAuth: [] }],
        response: { 200: Type.Object({ groups: Type.Array(GroupPreset) }), 401: ErrorBody }
      }
    },
    async () => ({ groups })
  )
}

export default groupRoutes
