import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { freeLoopbackPort as freePort } from '../../src/db/embedded-postgres.js'

export { freePort }

export interface ServerProcess {
  child: ChildProcess
  apiUrl: string
  opsUrl: string
  output: () => string
  exited: Promise<number | null>
}

/** The real server (src/server.ts) in a child process, as `npm run dev` runs it. */
export async function startServerProcess (env: Record<string, string | undefined>): Promise<ServerProcess> {
  const [port, healthPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: String(port), HEALTH_PORT: String(healthPort), ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout?.on('data', (chunk) => (output += chunk))
  child.stderr?.on('data', (chunk) => (output += chunk))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const server: ServerProcess = { child, apiUrl: `http://127.0.0.1:${port}`, opsUrl: `http://127.0.0.1:${healthPort}`, output: () => output, exited }
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}: ${output}`)
    const ready = await fetch(`${server.opsUrl}/ready`).then((res) => res.status === 200, () => false)
    if (ready) return server
    await sleep(100)
  }
  child.kill('SIGKILL')
  throw new Error(`server not ready within 30 s: ${output}`)
}
