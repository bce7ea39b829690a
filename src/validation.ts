import { Ajv } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { FastifySchema, FastifySchemaCompiler } from 'fastify'

// ajv-formats is CommonJS with exports.default.
const addFormats = addFormatsModule as unknown as typeof addFormatsModule.default

const common = { useDefaults: true, removeAdditional: false, allErrors: false, allowUnionTypes: true, strict: false } as const

/**
 * Two validators: querystring, params and headers arrive as strings and are coerced to the schema's
 * types ("?limit=20" is the number 20); a JSON body is taken as sent, so `{"content": 42}` is a 400,
 * not the string "42".
 */
const coercing = addFormats(new Ajv({ ...common, coerceTypes: 'array' }))
const strict = addFormats(new Ajv({ ...common, coerceTypes: false }))

export const validatorCompiler: FastifySchemaCompiler<FastifySchema> = ({ schema, httpPart }) =>
  (httpPart === 'body' ? strict : coercing).compile(schema as object)
