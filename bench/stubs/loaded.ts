/**
 * Each stub records here that it was loaded, so that bench/server.ts can refuse to measure a variant
 * whose substitution no longer applies (an import renamed in src/): it would be the full app under
 * another name.
 */
export const loadedStubs = new Set<string>()

export function stubLoaded (url: string): void {
  loadedStubs.add(url.slice(url.lastIndexOf('/') + 1))
}
