import { Ajv, type ValidateFunction } from 'ajv'
import addFormatsModule from 'ajv-formats'

// ajv-formats is CommonJS with exports.default.
const addFormats = addFormatsModule as unknown as typeof addFormatsModule.default

/**
 * Checks tool arguments against the inputSchema a server lists, before the call: a model's invalid
 * call becomes an error result it can correct, and the server never sees it. One compiled validator
 * per schema object (a re-list brings new objects, so a changed schema is compiled again).
 */
export class SchemaCheck {
  private readonly ajv = new Ajv({ allErrors: true, strict: false, validateSchema: false })
  private readonly compiled = new WeakMap<object, ValidateFunction>()

  constructor () {
    addFormats(this.ajv)
  }

  /** undefined when `args` are valid, else the problems in words (`arguments/a must be number`). */
  problems (schema: Record<string, unknown>, args: unknown): string | undefined {
    let validate = this.compiled.get(schema)
    if (!validate) {
      // `$schema` names a draft this Ajv may not hold (2020-12): the keywords tools use are the same.
      const { $schema: _draft, ...rest } = schema
      validate = this.ajv.compile(rest)
      this.compiled.set(schema, validate)
    }
    if (validate(args)) return undefined
    return this.ajv.errorsText(validate.errors, { dataVar: 'arguments' })
  }
}
