import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import staticFiles from '@fastify/static'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { PROJECT_ROOT } from '../../src/paths.js'
import { ErrorBody } from '../sessions/schemas.js'

/** The page's static files: plain HTML, CSS and ES modules, served as they are in the repository. */
export const CHAT_DIR = join(PROJECT_ROOT, 'public', 'chat')

/**
 * Only the page's own code runs, and it talks to this origin alone: a reply that somehow became
 * markup could neither load nor run anything, nor send data elsewhere.
 */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY'
}

const tags = ['chat']

/**
 * The web chat page (DESIGN section 11), public like `/` (its API calls carry the key). Two routes
 * rather than a wildcard: the page, and the files beside it, by name from the folder's own listing
 * read at start-up, so nothing outside it can be asked for.
 */
const chat: FastifyPluginAsyncTypebox = async (fastify) => {
  const files = new Set(readdirSync(CHAT_DIR).filter((name) => name !== 'index.html'))
  await fastify.register(staticFiles, { root: CHAT_DIR, serve: false })
  fastify.addHook('onSend', async (_request, reply, payload) => {
    reply.headers(SECURITY_HEADERS)
    return payload
  })

  fastify.get(
    '/chat',
    {
      schema: {
        summary: 'The web chat page',
        description: 'An HTML page to talk to the agents in the browser: `?session=<id>` opens that session with its history.',
        tags,
        produces: ['text/html'],
        querystring: Type.Object({ session: Type.Optional(Type.String({ description: 'The session to open' })) }),
        response: { 200: { description: 'The page (text/html)', type: 'string' } }
      }
    },
    async (_request, reply) => reply.sendFile('index.html')
  )

  fastify.get(
    '/chat/:file',
    {
      schema: {
        summary: "One of the chat page's files (its scripts and style sheet)",
        tags,
        params: Type.Object({ file: Type.String({ description: 'A file name, such as chat.js' }) }),
        response: { 200: { description: 'The file (text/javascript or text/css)', type: 'string' }, 404: ErrorBody }
      }
    },
    async (request, reply) => {
      if (!files.has(request.params.file)) throw fastify.httpErrors.notFound(`The chat page has no file ${request.params.file}`)
      return reply.sendFile(request.params.file)
    }
  )
}

export default chat
