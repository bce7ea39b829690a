import { join } from 'node:path'
import ts from 'typescript'
import { parseAllDocuments } from 'yaml'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import { Job } from 'kubernetes-models/batch/v1/Job'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Namespace } from 'kubernetes-models/v1/Namespace'
import { Secret } from 'kubernetes-models/v1/Secret'
import { Service } from 'kubernetes-models/v1/Service'
import type { IContainer } from 'kubernetes-models/v1/Container'
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { ROOT, repoPath, run } from './support.js'

// The Kubernetes API of a pinned version, offline: kubernetes-models@4.5.1 holds the OpenAPI schemas
// of Kubernetes v1.33.0, @kubernetes-models/prometheus-operator@4.4.4 the CRDs of Prometheus
// Operator v0.65.1 (package.json pins both exactly). Their validators check types, formats, enums
// and required fields, but not unknown fields (Kubernetes' OpenAPI allows them; the API server
// rejects them): those are checked against the same packages' TypeScript types.

export interface KubeObject {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Record<string, string> }
  [field: string]: unknown
}

interface Validated {
  validate(): void
}

/** Every kind the manifests may use, in the API version the pinned Kubernetes serves. */
const MODELS: Record<string, { Model: new (data: never) => Validated; types: string; type: string }> = {
  'apps/v1 Deployment': { Model: Deployment, types: 'kubernetes-models/apps/v1/Deployment', type: 'IDeployment' },
  'autoscaling/v2 HorizontalPodAutoscaler': { Model: HorizontalPodAutoscaler, types: 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler', type: 'IHorizontalPodAutoscaler' },
  'batch/v1 Job': { Model: Job, types: 'kubernetes-models/batch/v1/Job', type: 'IJob' },
  'networking.k8s.io/v1 NetworkPolicy': { Model: NetworkPolicy, types: 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy', type: 'INetworkPolicy' },
  'policy/v1 PodDisruptionBudget': { Model: PodDisruptionBudget, types: 'kubernetes-models/policy/v1/PodDisruptionBudget', type: 'IPodDisruptionBudget' },
  'v1 ConfigMap': { Model: ConfigMap, types: 'kubernetes-models/v1/ConfigMap', type: 'IConfigMap' },
  'v1 Namespace': { Model: Namespace, types: 'kubernetes-models/v1/Namespace', type: 'INamespace' },
  'v1 Secret': { Model: Secret, types: 'kubernetes-models/v1/Secret', type: 'ISecret' },
  'v1 Service': { Model: Service, types: 'kubernetes-models/v1/Service', type: 'IService' },
  'monitoring.coreos.com/v1 PrometheusRule': { Model: PrometheusRule, types: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule', type: 'IPrometheusRule' },
  'monitoring.coreos.com/v1 ServiceMonitor': { Model: ServiceMonitor, types: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor', type: 'IServiceMonitor' }
}

const describe = (object: KubeObject) => `${object.kind} ${object.metadata?.name}`

/** `kubectl kustomize <deploy/kubernetes/dir>`, parsed. */
export async function render (dir: string): Promise<KubeObject[]> {
  const result = await run('kubectl', ['kustomize', repoPath('deploy', 'kubernetes', dir)], { timeoutMs: 60_000 })
  if (result.code !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${result.stderr}`)
  return parseAllDocuments(result.stdout).map((doc) => doc.toJS() as KubeObject)
}

/** The schema errors of each object (an empty list when all are valid). */
export function schemaErrors (objects: KubeObject[]): string[] {
  const errors: string[] = []
  for (const object of objects) {
    const entry = MODELS[`${object.apiVersion} ${object.kind}`]
    if (!entry) {
      errors.push(`${describe(object)}: ${object.apiVersion} is not among the pinned APIs (${Object.keys(MODELS).join(', ')})`)
      continue
    }
    try {
      new entry.Model(object as never).validate()
    } catch (err) {
      errors.push(`${describe(object)}: ${(err as Error).message}`)
    }
  }
  return errors
}

/**
 * Fields the types do not know, as TypeScript's excess-property check reports them: each object
 * becomes an object literal typed with its model's interface, in a program compiled in memory.
 */
export function unknownFieldErrors (objects: KubeObject[]): string[] {
  const known = objects.filter((object) => MODELS[`${object.apiVersion} ${object.kind}`])
  const entries = known.map((object) => MODELS[`${object.apiVersion} ${object.kind}`]!)
  const imports = [...new Set(entries.map((e) => `import type { ${e.type} } from '${e.types}'`))]
  const declarations = known.map((object, i) => `export const o${i}: ${entries[i]!.type} = ${JSON.stringify(object, null, 2)}`)
  const source = [...imports, ...declarations].join('\n')
  const firstLine = new Map<number, number>()
  let line = imports.length
  declarations.forEach((declaration, i) => {
    firstLine.set(i, line)
    line += declaration.split('\n').length
  })

  // A file at the repository's root, so that the packages resolve as the tests' own imports do.
  const fileName = join(ROOT, '__kubernetes_fields__.ts')
  const options: ts.CompilerOptions = { strict: true, noEmit: true, skipLibCheck: true, types: [], module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, lib: ['lib.es2022.d.ts'] }
  const host = ts.createCompilerHost(options)
  const { getSourceFile, fileExists, readFile } = host
  host.getSourceFile = (name, version, ...rest) => name === fileName ? ts.createSourceFile(name, source, version) : getSourceFile(name, version, ...rest)
  host.fileExists = (name) => name === fileName || fileExists(name)
  host.readFile = (name) => name === fileName ? source : readFile(name)
  const program = ts.createProgram([fileName], options, host)
  return ts.getPreEmitDiagnostics(program).map((diagnostic) => {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, ' ')
    if (diagnostic.file?.fileName !== fileName || diagnostic.start === undefined) return message
    const at = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line
    const index = [...firstLine.entries()].filter(([, start]) => start <= at).at(-1)?.[0]
    return `${index === undefined ? 'imports' : describe(known[index]!)}: ${message}`
  })
}

export function one<T> (objects: KubeObject[], kind: string, name?: string): T {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name))
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` named ${name}` : ''}, found ${found.length}`)
  return found[0] as unknown as T
}

export type EnvValue = string | { secret: string; key: string; optional: boolean }

/** A container's environment as the kubelet builds it: envFrom ConfigMaps first, env entries win. */
export function containerEnv (container: IContainer, objects: KubeObject[]): Record<string, EnvValue> {
  const env: Record<string, EnvValue> = {}
  for (const source of container.envFrom ?? []) {
    const configMap = source.configMapRef && one<{ data: Record<string, string> }>(objects, 'ConfigMap', source.configMapRef.name)
    if (!configMap) throw new Error(`envFrom other than a ConfigMap in ${container.name}`)
    Object.assign(env, configMap.data)
  }
  for (const entry of container.env ?? []) {
    const ref = entry.valueFrom?.secretKeyRef
    if (ref) env[entry.name] = { secret: ref.name!, key: ref.key, optional: ref.optional ?? false }
    else if (entry.value !== undefined) env[entry.name] = entry.value
    else throw new Error(`${container.name}: ${entry.name} comes from neither a value nor a Secret`)
  }
  return env
}

/** A Kubernetes quantity (`512Mi`, `1`, `250m`) in bytes or cores. */
export function quantity (value: string | number): number {
  const match = /^([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?$/.exec(String(value))
  if (!match) throw new Error(`unreadable quantity ${value}`)
  const factor = { m: 1e-3, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1e3, M: 1e6, G: 1e9 }[match[2] ?? ''] ?? 1
  return Number(match[1]) * factor
}

/** True when every label of `selector` is on `labels`. */
export const selects = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v)
