import neostandard from 'neostandard'

// The Fastify organisation's style (neostandard) with its TypeScript rules, and three local choices:
export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'data/**', 'coverage/**', '.tap/**', 'node_modules/**']
  }),
  {
    rules: {
      // `void promise` marks a promise deliberately not awaited (a background flush, a timer callback).
      'no-void': ['error', { allowAsStatement: true }],
      // prom-client metrics register themselves with their registry when constructed.
      'no-new': 'off',
      // A TypeBox schema and its Static type share one name (`const Agent = Type.Object(...)`, `type Agent`).
      '@typescript-eslint/no-redeclare': 'off'
    }
  }
]
