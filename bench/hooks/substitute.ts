import type { InitializeHook, ResolveHook } from 'node:module'

export interface SubstitutionRule {
  /** Path of the importing file, relative to the project root (e.g. "src/app.ts"). */
  parent: string
  specifier: string
  /** file: URL of the stub that replaces the import. */
  url: string
}

let rules: SubstitutionRule[] = []

export const initialize: InitializeHook<{ rules: SubstitutionRule[] }> = (data) => {
  rules = data.rules
}

export const resolve: ResolveHook = async (specifier, context, nextResolve) => {
  const parent = context.parentURL ? new URL(context.parentURL).pathname : ''
  const rule = rules.find((r) => r.specifier === specifier && parent.endsWith('/' + r.parent))
  // Resolved through the rest of the chain, so that tsx loads the TypeScript stub.
  if (rule) return nextResolve(rule.url, context)
  return nextResolve(specifier, context)
}
