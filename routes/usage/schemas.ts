import { Type } from 'typebox'

const IsoDate = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'A UTC day, YYYY-MM-DD' })

export const UsageQuery = Type.Object({
  from: Type.Optional({ ...IsoDate, description: 'First UTC day (YYYY-MM-DD), included; default: today' }),
  to: Type.Optional({ ...IsoDate, description: 'Last UTC day (YYYY-MM-DD), included; default: `from`' }),
  groupBy: Type.Enum(['day', 'agent', 'model'], { default: 'day', description: 'What the rows are per' })
}, { additionalProperties: false })

const Counts = {
  inputTokens: Type.Integer(),
  outputTokens: Type.Integer(),
  replies: Type.Integer()
}

export const UsageReport = Type.Object({
  from: IsoDate,
  to: IsoDate,
  groupBy: Type.Enum(['day', 'agent', 'model']),
  totals: Type.Object(Counts),
  rows: Type.Array(Type.Object({ key: Type.String({ description: 'The day (YYYY-MM-DD), agent id or model' }), ...Counts }))
})
