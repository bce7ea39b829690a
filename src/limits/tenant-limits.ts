import { readFile } from 'node:fs/promises'
import { Type } from 'typebox'
import { Compile } from 'typebox/compile'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../config.js'

/** The limits of one tenant (DESIGN section 12). 0 means unlimited. */
export interface TenantLimits {
  rateLimitPerMinute: number
  messageRatePerMinute: number
  maxStreams: number
  tokenBudgetPerDay: number
}

export const LIMIT_FIELDS = ['rateLimitPerMinute', 'messageRatePerMinute', 'maxStreams', 'tokenBudgetPerDay'] as const

/** Tenant ids as API_KEYS accepts them (plugins/auth.ts). */
const TENANT_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/

const Limit = Type.Integer({ minimum: 0 })
const Override = Type.Object(
  Object.fromEntries(LIMIT_FIELDS.map((field) => [field, Type.Optional(Limit)])) as Record<(typeof LIMIT_FIELDS)[number], ReturnType<typeof Type.Optional<typeof Limit>>>,
  { additionalProperties: false }
)
const checkOverride = Compile(Override)

/** Every tenant's limits: the defaults of the environment, with the TENANTS_FILE overrides on top. */
export class LimitTable {
  constructor (
    readonly defaults: TenantLimits,
    private readonly overrides: ReadonlyMap<string, Partial<TenantLimits>> = new Map()
  ) {}

  of (tenant: string): TenantLimits {
    const override = this.overrides.get(tenant)
    return override ? { ...this.defaults, ...override } : this.defaults
  }

  /** Whether any tenant has a non-zero value for the limit (else its machinery is not installed). */
  anyLimits (field: keyof TenantLimits): boolean {
    if (this.defaults[field] > 0) return true
    for (const override of this.overrides.values()) if ((override[field] ?? 0) > 0) return true
    return false
  }

  /** The tenants named in the overrides file. */
  get namedTenants (): string[] {
    return [...this.overrides.keys()]
  }
}

/** Reads and validates TENANTS_FILE; a problem is a ConfigError naming the file, the tenant and the field. */
export async function loadTenantOverrides (path: string): Promise<Map<string, Partial<TenantLimits>>> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, not a file' : (err as Error).message
    throw new ConfigError(`TENANTS_FILE ${path}: cannot read the tenants file (${why})`)
  }
  return parseTenantOverrides(text, path)
}

/** Validates the text of a tenants file: `tenants: { <tenant>: { rateLimitPerMinute, ... } }`. */
export function parseTenantOverrides (text: string, source: string): Map<string, Partial<TenantLimits>> {
  let document: unknown
  try {
    document = parseYaml(text)
  } catch (err) {
    throw new ConfigError(`TENANTS_FILE ${source}: invalid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (!isMapping(document) || !isMapping(document.tenants)) {
    throw new ConfigError(`TENANTS_FILE ${source}: expected a YAML mapping with a "tenants:" mapping of tenant ids to limits`)
  }
  const problems: string[] = []
  const overrides = new Map<string, Partial<TenantLimits>>()
  for (const [tenant, entry] of Object.entries(document.tenants)) {
    const label = `tenant ${JSON.stringify(tenant)}`
    if (!TENANT_PATTERN.test(tenant)) {
      problems.push(`${label}: invalid tenant id (1 to 64 letters, digits, _ . -)`)
      continue
    }
    if (!isMapping(entry)) {
      problems.push(`${label}: must be a mapping of limits (${LIMIT_FIELDS.join(', ')})`)
      continue
    }
    const found: string[] = []
    for (const error of checkOverride.Errors(entry)) {
      if (error.keyword === 'additionalProperties') {
        for (const field of (error.params as { additionalProperties: string[] }).additionalProperties) {
          found.push(`unknown field "${field}" (the fields are ${LIMIT_FIELDS.join(', ')})`)
        }
      } else if (error.keyword !== 'boolean') {
        const field = error.instancePath.slice(1)
        found.push(`${field} must be a whole number, 0 (unlimited) or more (got ${JSON.stringify(entry[field])})`)
      }
    }
    if (found.length > 0) problems.push(...found.map((problem) => `${label}: ${problem}`))
    else overrides.set(tenant, entry as Partial<TenantLimits>)
  }
  if (problems.length > 0) throw new ConfigError(`TENANTS_FILE ${source}: ${problems.join('; ')}`)
  return overrides
}

function isMapping (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
