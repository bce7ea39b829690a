// @fastify/rate-limit ships its Redis store without types: src/limits/counter-store.ts gives it its own.
declare module '@fastify/rate-limit/store/RedisStore.js' {
  const RedisStore: unknown
  export default RedisStore
}
