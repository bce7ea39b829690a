import { register } from 'node:module'
import { pathToFileURL } from 'node:url'
import { join, resolve } from 'node:path'
import type { Substitution } from '../variants.js'
import type { SubstitutionRule } from './substitute.js'

// Loaded with `--import` after tsx in a benchmark server process: installs the resolve hook that
// swaps the imports listed in BENCH_SUBSTITUTE (a JSON array of Substitution) for bench/stubs/*.
const substitutions = JSON.parse(process.env.BENCH_SUBSTITUTE ?? '[]') as Substitution[]
const stubsDir = resolve(import.meta.dirname, '..', 'stubs')
const rules: SubstitutionRule[] = substitutions.map((s) => ({
  parent: s.parent,
  specifier: s.specifier,
  url: pathToFileURL(join(stubsDir, s.stub)).href
}))
register('./substitute.ts', import.meta.url, { data: { rules } })
