// What must be undone if the benchmark is interrupted (Ctrl-C): server processes, the scratch
// database. Each phase registers its own cleanup and removes it when it has cleaned up itself.

const cleanups = new Set<() => Promise<unknown>>()

export function onInterrupt (cleanup: () => Promise<unknown>): () => void {
  cleanups.add(cleanup)
  return () => cleanups.delete(cleanup)
}

let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) process.exit(130)
    interrupted = true
    process.stderr.write(`\n${signal}: cleaning up (again to exit at once)\n`)
    void Promise.allSettled([...cleanups].reverse().map((cleanup) => cleanup())).finally(() => process.exit(130))
  })
}
