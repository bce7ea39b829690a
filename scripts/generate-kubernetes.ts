import { readFile, writeFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parse, stringify } from 'yaml'

// `npm run k8s:generate`: the files of deploy/kubernetes/base that copy a source of truth kept
// elsewhere in the repository, so that there is only one to edit. test/deploy/kubernetes.test.ts
// fails when they drift.
//   prometheusrule.yaml  the rules of monitoring/alerts.yml as a Prometheus Operator PrometheusRule
//   agents.yaml          agents/default.yaml, the team the smalltalk-agents ConfigMap mounts

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const BASE = join(ROOT, 'deploy', 'kubernetes', 'base')

const header = (source: string) => `# Generated from ${source} by \`npm run k8s:generate\`: edit that file, then run it again.\n`

export async function generatedFiles (): Promise<Record<string, string>> {
  const alerts = parse(await readFile(join(ROOT, 'monitoring', 'alerts.yml'), 'utf8')) as { groups: unknown[] }
  const rule = {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: {
      name: 'smalltalk',
      labels: { 'app.kubernetes.io/name': 'smalltalk', 'app.kubernetes.io/component': 'server', 'app.kubernetes.io/part-of': 'smalltalk' }
    },
    spec: { groups: alerts.groups }
  }
  const agents = await readFile(join(ROOT, 'agents', 'default.yaml'), 'utf8')
  return {
    [join(BASE, 'prometheusrule.yaml')]: header('monitoring/alerts.yml') + stringify(rule, { lineWidth: 0 }),
    [join(BASE, 'agents.yaml')]: header('agents/default.yaml') + agents
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const [file, text] of Object.entries(await generatedFiles())) {
    await writeFile(file, text)
    console.log(`wrote ${relative(ROOT, file)}`)
  }
}
