import { Type, type Static } from 'typebox'

// The whole configuration surface of the service. Every variable has its default here and a line in
// .env.example; the Config type is derived from this schema, so type and validation cannot drift.
const Port = Type.Integer({ minimum: 0, maximum: 65535 })
const Positive = (defaultValue: number) => Type.Integer({ minimum: 1, default: defaultValue })
const NonNegative = (defaultValue: number) => Type.Number({ minimum: 0, default: defaultValue })

export const EnvSchema = Type.Object({
  // Application
  NODE_ENV: Type.String({ default: 'development' }),
  HOST: Type.String({ default: '0.0.0.0', minLength: 1 }),
  PORT: Type.Integer({ ...Port, default: 3000 }),
  HEALTH_PORT: Type.Integer({ ...Port, default: 3001 }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  ACCESS_LOG: Type.Boolean({ default: true }),
  BODY_LIMIT: Positive(1_048_576),
  SHUTDOWN_TIMEOUT_MS: Positive(10_000),
  TRUST_PROXY: Type.Boolean({ default: false }),

  // Overload shedding on the api port (0 disables a limit)
  MAX_EVENT_LOOP_DELAY_MS: NonNegative(1000),
  MAX_EVENT_LOOP_UTILIZATION: Type.Number({ minimum: 0, maximum: 1, default: 0 }),
  MAX_HEAP_USED_BYTES: NonNegative(0),
  MAX_RSS_BYTES: NonNegative(0),
  RETRY_AFTER_SECONDS: Positive(10),

  // PostgreSQL: with no DATABASE_URL an embedded server is started with its data in DATA_DIR
  DATABASE_URL: Type.Optional(
    Type.String({ pattern: '^postgres(ql)?://[^\\s]+$', description: 'postgres://user:pass@host:port/db' })
  ),
  DATA_DIR: Type.String({ default: './data', minLength: 1 }),
  DB_POOL_MAX: Positive(10),
  DB_CONNECT_TIMEOUT_MS: Positive(5000),
  DB_QUERY_TIMEOUT_MS: Positive(10_000),
  MIGRATE_ON_START: Type.Boolean({ default: true }),

  // Redis: with no REDIS_URL an in-process cache is used
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://[^\\s]*$', description: 'redis://host:port/db' })),
  REDIS_KEY_PREFIX: Type.String({ default: 'smalltalk:' }),
  REDIS_CONNECT_TIMEOUT_MS: Positive(2000),
  REDIS_COMMAND_TIMEOUT_MS: Positive(500),
  CACHE_MAX_ENTRIES: Positive(10_000),

  // Probes
  HEALTH_CHECK_TIMEOUT_MS: Positive(2000),
  HEALTH_EVENT_LOOP_DELAY_WARN_MS: Positive(200),
  HEALTH_HEAP_WARN_RATIO: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.9 }),

  // Public API
  API_KEYS: Type.String({ default: '' }),
  MAX_MESSAGE_CHARS: Positive(32_000),
  METADATA_MAX_BYTES: Positive(16_384),
  SSE_DRAIN_TIMEOUT_MS: Positive(30_000),

  // Limits per tenant (DESIGN section 12; 0 means unlimited)
  RATE_LIMIT_PER_MINUTE: Type.Integer({ minimum: 0, default: 0 }),
  MESSAGE_RATE_PER_MINUTE: Type.Integer({ minimum: 0, default: 0 }),
  MAX_STREAMS_PER_TENANT: Type.Integer({ minimum: 0, default: 0 }),
  TOKEN_BUDGET_PER_DAY: Type.Integer({ minimum: 0, default: 0 }),
  TENANTS_FILE: Type.Optional(Type.String({ minLength: 1 })),
  LIMIT_REPLICAS: Positive(1),

  // Sessions
  SESSION_TTL: Positive(86_400),
  SESSION_CLEANUP_INTERVAL: Positive(300),
  SESSION_PURGE_AFTER: Positive(86_400),
  EVENT_RETENTION_DAYS: Positive(30),
  HISTORY_PAGE_CACHE_MB: NonNegative(32),

  // Agents and LLM providers
  AGENTS_FILE: Type.String({ default: 'agents/default.yaml' }),
  ECHO_TOKEN_DELAY_MS: NonNegative(0),
  CONTEXT_MESSAGES: Positive(20),
  LLM_TIMEOUT_MS: Positive(60_000),
  LLM_MAX_RETRIES: Type.Integer({ minimum: 0, maximum: 10, default: 2 }),
  LLM_RETRY_BASE_MS: Positive(250),
  LLM_RETRY_MAX_MS: Positive(5_000),
  LLM_BREAKER_FAILURES: Positive(5),
  LLM_BREAKER_COOLDOWN_MS: Positive(30_000),
  ROUTER: Type.Enum(['scoring', 'llm'], { default: 'scoring' }),
  ROUTER_AGENT: Type.Optional(Type.String()),
  ROUTER_TIMEOUT_MS: Positive(3_000),
  // Group conversations (DESIGN section 9)
  GROUP_MAX_TURNS: Type.Integer({ minimum: 1, maximum: 50, default: 10 }),
  GROUP_ROUND_TIMEOUT_MS: Positive(180_000),
  GROUP_MANAGER_TIMEOUT_MS: Positive(5_000),
  // Tools: MCP servers of the manifest (DESIGN section 14)
  TOOL_TIMEOUT_MS: Positive(30_000),
  TOOL_RESULT_MAX_CHARS: Positive(20_000),
  AGENT_HEALTH_CHECK_INTERVAL: Positive(60),
  HEALTH_CHECK_RETENTION_DAYS: Positive(7),
  AGENT_HEALTH_PROBE: Type.Enum(['models', 'completion'], { default: 'models' }),
  AGENT_HEALTH_PROBE_TIMEOUT_MS: Positive(10_000),
  OPENAI_API_KEY: Type.Optional(Type.String()),
  OPENAI_BASE_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  ANTHROPIC_API_KEY: Type.Optional(Type.String()),
  ANTHROPIC_BASE_URL: Type.Optional(Type.String({ pattern: '^https?://' })),
  GEMINI_API_KEY: Type.Optional(Type.String()),
  GEMINI_BASE_URL: Type.Optional(Type.String({ pattern: '^https?://' }))
})

export type Config = Static<typeof EnvSchema>

/** Variables whose values must never be logged or echoed back in an error. */
export const SECRET_VARIABLES = new Set(['DATABASE_URL', 'REDIS_URL', 'API_KEYS', 'OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'GEMINI_API_KEY'])

export type Environment = Record<string, string | undefined>

/**
 * An empty value means "not set": compose files pass `${VAR:-}` and .env files often carry `VAR=`.
 * Only the schema's own variables are kept, so the rest of the environment never reaches the config.
 */
export function selectEnvironment (env: Environment): Record<string, string> {
  const selected: Record<string, string> = {}
  for (const name of Object.keys(EnvSchema.properties)) {
    const value = env[name]
    if (value !== undefined && value.trim() !== '') selected[name] = value.trim()
  }
  return selected
}

interface AjvError {
  instancePath: string
  message?: string
  params?: { allowedValues?: unknown[]; missingProperty?: string }
}

/** A start-up failure caused by a bad variable: the message names it and says what is wrong. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

export function describeConfigErrors (errors: AjvError[], env: Record<string, string>): string {
  const seen = new Set<string>()
  const parts: string[] = []
  for (const error of errors) {
    const name = error.instancePath.replace(/^\//, '') || error.params?.missingProperty || 'configuration'
    if (seen.has(name)) continue
    seen.add(name)
    const value = env[name]
    const shown = value === undefined ? '' : SECRET_VARIABLES.has(name) ? ' (value hidden)' : ` (got ${JSON.stringify(value)})`
    parts.push(`${name} ${explain(error, name)}${shown}`)
  }
  return `Invalid configuration: ${parts.join('; ')}`
}

function explain (error: AjvError, name: string): string {
  const rule = EnvSchema.properties[name as keyof typeof EnvSchema.properties] as { description?: string } | undefined
  if (error.params?.allowedValues) return `must be one of ${error.params.allowedValues.join(', ')}`
  if (rule?.description && error.message?.startsWith('must match pattern')) return `must look like ${rule.description}`
  return error.message ?? 'is invalid'
}
