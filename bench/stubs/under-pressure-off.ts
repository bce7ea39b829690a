import fp from 'fastify-plugin'
import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/** Stands in for @fastify/under-pressure: registered, adds nothing. */
export default fp(async function underPressureLeftOut () {}, { name: '@fastify/under-pressure' })
