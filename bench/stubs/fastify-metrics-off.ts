import fp from 'fastify-plugin'
import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/** Stands in for the fastify-metrics package (CommonJS: the plugin is its `.default`): registers nothing. */
export default { default: fp(async function fastifyMetricsLeftOut () {}) }
