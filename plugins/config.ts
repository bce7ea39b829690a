import fp from 'fastify-plugin'
import fastifyEnv from '@fastify/env'
import { ConfigError, EnvSchema, describeConfigErrors, selectEnvironment, type Config, type Environment } from '../src/config.js'
import { parseApiKeys } from './auth.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    /**
     * The environment the service was started with (process.env, or a test's object): read only where
     * the manifest names variables (MCP servers' headers and passed-through variables).
     */
    environment: Readonly<Environment>
  }
}

export interface ConfigPluginOptions {
  /** The environment to read: process.env in the server, a plain object in tests. */
  env: Environment
}

/** Validates the environment once, at registration, and decorates `fastify.config`. */
export default fp(
  async function config (fastify, opts: ConfigPluginOptions) {
    const data = selectEnvironment(opts.env)
    try {
      // env: false so that only opts.env is read (tests never depend on the process environment)
      await fastify.register(fastifyEnv, { schema: EnvSchema, data, env: false, dotenv: false })
    } catch (err) {
      const errors = (err as { errors?: Parameters<typeof describeConfigErrors>[0] }).errors
      throw errors ? new ConfigError(describeConfigErrors(errors, data)) : err
    }
    // API_KEYS is checked by its parser, whose message names the bad entry: run it here as well, so
    // that a bad value stops start-up before anything is opened, as the schema's checks do.
    parseApiKeys(fastify.config.API_KEYS)
    fastify.decorate('environment', opts.env)
  },
  { name: 'config' }
)
