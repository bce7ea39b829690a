import { readFile } from 'node:fs/promises'
import envSchema from 'env-schema'
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment'
import type { IHorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import type { IJob } from 'kubernetes-models/batch/v1/Job'
import type { INetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy'
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import type { IContainer } from 'kubernetes-models/v1/Container'
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec'
import type { IService } from 'kubernetes-models/v1/Service'
import type { IPrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule'
import type { IServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { generatedFiles } from '../../scripts/generate-kubernetes.js'
import { EnvSchema, selectEnvironment } from '../../src/config.js'
import { containerEnv, one, quantity, render, schemaErrors, selects, unknownFieldErrors, type EnvValue, type KubeObject } from './kubernetes-support.js'
import { imageCommands } from './runtime-layout.js'
import { alertRules, haveTool, parseDockerfile, readRepoFile, readYaml, run } from './support.js'

// deploy/kubernetes rendered by `kubectl kustomize` (kustomize built into kubectl), every object
// checked against the Kubernetes API schemas of a pinned version (kubernetes-support.ts), then what
// no schema can see: probes and ports, shutdown timing, security, migrations, selectors, the network
// policy, the configuration the pods get, and the monitoring objects against monitoring/.

const KUSTOMIZATIONS = ['base', 'overlays/development', 'overlays/production'] as const
const OVERLAYS = { development: 'overlays/development', production: 'overlays/production' } as const

const POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
// Read by Node.js itself, not by the service's configuration.
const NODE_VARIABLES = new Set(['NODE_OPTIONS'])
const SECRET_EXAMPLE = parseYaml(readRepoFile('deploy', 'kubernetes', 'secret.example.yaml')) as KubeObject & { stringData: Record<string, string> }
const IMAGE_USER = parseDockerfile(readRepoFile('Dockerfile')).stages.find((s) => s.name === 'runtime')?.instructions.filter((i) => i.keyword === 'USER').at(-1)?.args

/** A variable as a pod sees it: the manifest's value, else the service's default. */
function setting (env: Record<string, EnvValue>, name: keyof typeof EnvSchema.properties): string {
  const value = env[name]
  if (typeof value === 'string') return value
  if (value) throw new Error(`${name} comes from a Secret`)
  return String((EnvSchema.properties[name] as { default?: unknown }).default)
}

const podSpec = (workload: IDeployment | IJob): IPodSpec => workload.spec!.template.spec!
const mainContainer = (workload: IDeployment | IJob): IContainer => podSpec(workload).containers[0]!

if (haveTool(t, 'kubectl')) {
  const version = await run('kubectl', ['version', '--client', '-o', 'json'])
  const kustomize = (JSON.parse(version.stdout) as { kustomizeVersion?: string }).kustomizeVersion ?? ''
  t.comment(`kubectl ${(JSON.parse(version.stdout) as { clientVersion: { gitVersion: string } }).clientVersion.gitVersion}, kustomize ${kustomize}`)
  t.ok(Number(/^v(\d+)/.exec(kustomize)?.[1]) >= 5, `kubectl's kustomize is v5 or later (${kustomize || 'none'}): the overlays use its patches and labels syntax`)

  const rendered = Object.fromEntries(await Promise.all(KUSTOMIZATIONS.map(async (dir) => [dir, await render(dir)] as const))) as Record<(typeof KUSTOMIZATIONS)[number], KubeObject[]>

  t.test('every rendered object is valid for the pinned Kubernetes and Prometheus Operator APIs', async (t) => {
    for (const dir of KUSTOMIZATIONS) {
      const objects = rendered[dir]
      t.ok(objects.length > 0, `${dir} renders objects`)
      t.same(schemaErrors(objects), [], `${dir}: ${objects.length} objects match their schemas`)
    }
    t.same(schemaErrors([SECRET_EXAMPLE]), [], 'the example Secret matches its schema')
    t.same(unknownFieldErrors([...Object.values(rendered).flat(), SECRET_EXAMPLE]), [], 'no field the API does not know (the API server would reject it)')
  })

  t.test('the unknown-field check does see an unknown field', async (t) => {
    const deployment = structuredClone(one<IDeployment>(rendered['overlays/production'], 'Deployment'))
    const container = mainContainer(deployment) as IContainer & Record<string, unknown>
    container.livenesProbe = container.livenessProbe
    const errors = unknownFieldErrors([deployment as unknown as KubeObject])
    t.ok(errors.some((error) => /^Deployment smalltalk: .*livenesProbe.* does not exist/.test(error)), 'a misspelt probe is reported', { errors })
  })

  for (const [name, dir] of Object.entries(OVERLAYS)) {
    const objects = rendered[dir]
    const deployment = one<IDeployment>(objects, 'Deployment', 'smalltalk')
    const job = one<IJob>(objects, 'Job', 'smalltalk-migrate')
    const service = one<IService>(objects, 'Service', 'smalltalk')
    const container = mainContainer(deployment)
    const env = containerEnv(container, objects)
    const podLabels = deployment.spec!.template.metadata!.labels!

    t.test(`${name}: probes on the ops port, by name`, async (t) => {
      const ports = Object.fromEntries((container.ports ?? []).map((p) => [p.name, p.containerPort]))
      t.same(ports, { http: Number(setting(env, 'PORT')), ops: Number(setting(env, 'HEALTH_PORT')) }, 'container ports http = PORT and ops = HEALTH_PORT')
      t.same(container.startupProbe?.httpGet, { path: '/healthz', port: 'ops' }, 'startup: /healthz on ops')
      t.same(container.livenessProbe?.httpGet, { path: '/healthz', port: 'ops' }, 'liveness: /healthz on ops (never depends on PostgreSQL or Redis)')
      t.same(container.readinessProbe?.httpGet, { path: '/ready', port: 'ops' }, 'readiness: /ready on ops')
      t.ok(container.readinessProbe!.timeoutSeconds! * 1000 > Number(setting(env, 'HEALTH_CHECK_TIMEOUT_MS')), 'readiness waits longer than HEALTH_CHECK_TIMEOUT_MS: a slow dependency is a 503, not a probe timeout')
      const servicePorts = Object.fromEntries((service.spec!.ports ?? []).map((p) => [p.name, p.targetPort]))
      t.same(servicePorts, { http: 'http', ops: 'ops' }, 'the Service targets both ports by name')
    })

    t.test(`${name}: the grace period covers the preStop pause and the drain`, async (t) => {
      const command = container.lifecycle?.preStop?.exec?.command ?? []
      t.equal(command[0], 'sleep', 'preStop pauses (busybox sleep, in the image)')
      const pause = Number(command[1])
      t.ok(pause > 0, `for ${pause} s, while the endpoints drop the pod`)
      const grace = podSpec(deployment).terminationGracePeriodSeconds!
      const drain = Number(setting(env, 'SHUTDOWN_TIMEOUT_MS')) / 1000
      t.ok(grace > pause + drain, `terminationGracePeriodSeconds ${grace} > preStop ${pause} s + SHUTDOWN_TIMEOUT_MS ${drain} s`)
    })

    t.test(`${name}: non-root, read-only, no capabilities, for the pods and the Job`, async (t) => {
      for (const workload of [deployment, job]) {
        const kind = (workload as { kind: string }).kind
        const pod = podSpec(workload)
        t.match(pod.securityContext, { runAsNonRoot: true, runAsUser: 1001, runAsGroup: 1001, seccompProfile: { type: 'RuntimeDefault' } }, `${kind}: runs as 1001:1001 with the runtime's seccomp profile`)
        t.equal(`${pod.securityContext?.runAsUser}:${pod.securityContext?.runAsGroup}`, IMAGE_USER, `${kind}: the image's own USER`)
        t.equal(pod.automountServiceAccountToken, false, `${kind}: no service account token`)
        const emptyDirs = new Set((pod.volumes ?? []).filter((v) => v.emptyDir).map((v) => v.name))
        for (const c of pod.containers) {
          t.match(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } }, `${kind}/${c.name}: read-only root, no privilege escalation, every capability dropped`)
          t.notOk(c.securityContext?.capabilities?.add, `${kind}/${c.name}: none added back`)
          const writable = (c.volumeMounts ?? []).filter((m) => !m.readOnly)
          t.ok(writable.every((m) => emptyDirs.has(m.name)), `${kind}/${c.name}: every writable mount is an emptyDir`)
          t.ok(writable.some((m) => m.mountPath === '/tmp'), `${kind}/${c.name}: /tmp is writable`)
          for (const resource of ['cpu', 'memory']) {
            t.ok(c.resources?.requests?.[resource] && c.resources?.limits?.[resource], `${kind}/${c.name}: ${resource} request and limit`)
          }
        }
      }
      const limit = quantity(container.resources!.limits!.memory!)
      t.ok(Number(setting(env, 'MAX_RSS_BYTES')) < limit, 'MAX_RSS_BYTES below the memory limit: the service sheds load before the OOM killer')
      const oldSpace = /--max-old-space-size=(\d+)/.exec(String(env.NODE_OPTIONS ?? ''))?.[1]
      t.ok(oldSpace && Number(oldSpace) * 1024 ** 2 < Number(setting(env, 'MAX_RSS_BYTES')), 'the V8 heap bound is below MAX_RSS_BYTES')
    })

    t.test(`${name}: the Job migrates, the pods do not`, async (t) => {
      t.equal(env.MIGRATE_ON_START, 'false', 'the pods run with MIGRATE_ON_START=false')
      const migrate = mainContainer(job)
      t.notOk(migrate.command, "the Job keeps the image's entry point (tini)")
      t.same(migrate.args, imageCommands().migrate, "and runs the bundle's migration CLI (npm run db:migrate in the image)")
      t.notOk('MIGRATE_ON_START' in containerEnv(migrate, objects), 'no MIGRATE_ON_START for the Job: its CLI only migrates')
      t.equal(migrate.image, container.image, `the same image as the pods (${container.image}): the migrations they expect`)
      t.same(containerEnv(migrate, objects).DATABASE_URL, env.DATABASE_URL, 'the same DATABASE_URL Secret key as the pods')
      const first = objects.filter((o) => ['config', 'migration'].includes(o.metadata.labels?.['app.kubernetes.io/component'] ?? ''))
      const needed = [...(migrate.envFrom ?? []).map((source) => source.configMapRef?.name), ...(podSpec(job).volumes ?? []).map((v) => v.configMap?.name)].filter(Boolean)
      t.ok(needed.every((configMap) => first.some((o) => o.kind === 'ConfigMap' && o.metadata.name === configMap)), 'the ConfigMaps the Job reads are labelled to apply with it, before the rollout (README, "Install and upgrade")')
      t.same(first.filter((o) => o.kind !== 'ConfigMap').map((o) => `${o.kind} ${o.metadata.name}`), ['Job smalltalk-migrate'], 'and nothing of the server is')
      t.ok(job.spec!.ttlSecondsAfterFinished! > 0, 'ttlSecondsAfterFinished set')
      t.equal(podSpec(job).restartPolicy, 'Never', 'a failed attempt keeps its pod (and logs); backoffLimit retries')
    })

    t.test(`${name}: selectors match the server's pods, and only them`, async (t) => {
      const jobLabels = job.spec!.template.metadata!.labels!
      t.ok(selects(deployment.spec!.selector.matchLabels, podLabels), 'the Deployment selects its own pods')
      t.ok(selects(service.spec!.selector, podLabels), 'the Service selects them')
      t.notOk(selects(service.spec!.selector, jobLabels), "the Service does not select the migration Job's pod")
      t.ok(selects(one<IPodDisruptionBudget>(objects, 'PodDisruptionBudget').spec!.selector!.matchLabels, podLabels), 'the PodDisruptionBudget selects them')
      t.ok(selects(one<INetworkPolicy>(objects, 'NetworkPolicy').spec!.podSelector.matchLabels, podLabels), 'the NetworkPolicy selects them')
      const spread = podSpec(deployment).topologySpreadConstraints ?? []
      t.same(spread.map((c) => c.topologyKey), ['topology.kubernetes.io/zone', 'kubernetes.io/hostname'], 'spread over zones, then nodes')
      t.ok(spread.every((c) => selects(c.labelSelector?.matchLabels, podLabels)), 'each spread constraint counts these pods')
    })

    t.test(`${name}: the NetworkPolicy admits the ops port only from the monitoring namespace`, async (t) => {
      const policy = one<INetworkPolicy>(objects, 'NetworkPolicy')
      t.same(policy.spec!.policyTypes, ['Ingress'], 'an ingress policy')
      const rules = policy.spec!.ingress ?? []
      t.ok(rules.every((rule) => rule.ports && rule.ports.length > 0), 'every rule names its ports (a rule without ports admits all of them)')
      const opsPort = Number(setting(env, 'HEALTH_PORT'))
      const opsRules = rules.filter((rule) => rule.ports!.some((p) => p.port === 'ops' || p.port === opsPort))
      t.equal(opsRules.length, 1, 'one rule admits the ops port')
      t.same(opsRules[0]?.ports, [{ port: 'ops', protocol: 'TCP' }], 'and only the ops port')
      t.same(opsRules[0]?.from, [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }], 'from the monitoring namespace only')
    })

    t.test(`${name}: the configuration the pods get is one the service accepts`, async (t) => {
      for (const [workload, c] of [['Deployment', container], ['Job', mainContainer(job)]] as const) {
        const vars = containerEnv(c, objects)
        const unknown = Object.keys(vars).filter((key) => !(key in EnvSchema.properties) && !NODE_VARIABLES.has(key))
        t.same(unknown, [], `${workload}: every variable is one the service (or Node.js) reads: a misspelt one would be ignored`)
        const resolved = Object.fromEntries(
          Object.entries(vars).map(([key, value]) => [key, typeof value === 'string' ? value : SECRET_EXAMPLE.stringData[value.key]])
        )
        t.doesNotThrow(() => envSchema({ schema: EnvSchema, data: selectEnvironment(resolved), env: false }), `${workload}: valid for the service's schema (with the example Secret's values)`)
        for (const value of Object.values(vars)) {
          if (typeof value === 'string') continue
          t.equal(value.secret, SECRET_EXAMPLE.metadata.name, `${workload}: ${value.key} comes from ${value.secret}`)
          t.ok(value.key in SECRET_EXAMPLE.stringData, `${workload}: the example Secret documents ${value.key}`)
        }
      }
      const agentsFile = setting(env, 'AGENTS_FILE')
      const mount = (container.volumeMounts ?? []).find((m) => agentsFile.startsWith(m.mountPath + '/'))
      const volume = podSpec(deployment).volumes?.find((v) => v.name === mount?.name)
      const configMap = volume?.configMap && one<{ data: Record<string, string> }>(objects, 'ConfigMap', volume.configMap.name)
      t.ok(configMap?.data[agentsFile.slice(mount!.mountPath.length + 1)], `AGENTS_FILE (${agentsFile}) is a key of the mounted agents ConfigMap`)
    })

    t.test(`${name}: its own namespace, under the restricted Pod Security profile`, async (t) => {
      const namespace = one<KubeObject>(objects, 'Namespace')
      t.equal(namespace.metadata.labels?.['pod-security.kubernetes.io/enforce'], 'restricted', 'Pod Security Admission enforces "restricted"')
      t.same(objects.filter((o) => o.kind !== 'Namespace' && o.metadata.namespace !== namespace.metadata.name).map((o) => o.kind), [], `every object is in ${namespace.metadata.name}`)
      t.match(container.image, /:[^:/]+$/, 'the image has an explicit tag')
      t.notMatch(container.image, /:latest$/, 'not latest')
    })
  }

  t.test('production: three replicas at least, scaled by the autoscaler', async (t) => {
    const objects = rendered[OVERLAYS.production]
    const deployment = one<IDeployment>(objects, 'Deployment', 'smalltalk')
    const hpa = one<IHorizontalPodAutoscaler>(objects, 'HorizontalPodAutoscaler')
    t.equal(deployment.spec!.replicas, undefined, 'no replicas in the Deployment (an apply would reset what the autoscaler chose)')
    t.same(hpa.spec!.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: 'smalltalk' }, 'the autoscaler scales the Deployment')
    t.equal(hpa.spec!.minReplicas, 3, 'at least 3 replicas')
    t.ok(hpa.spec!.maxReplicas > 3, `up to ${hpa.spec!.maxReplicas}`)
    const pool = Number(setting(containerEnv(mainContainer(deployment), objects), 'DB_POOL_MAX'))
    t.ok(hpa.spec!.maxReplicas * pool + 1 < POSTGRES_DEFAULT_MAX_CONNECTIONS, `at most ${hpa.spec!.maxReplicas} x DB_POOL_MAX ${pool} + the Job's connection, below PostgreSQL's default max_connections (${POSTGRES_DEFAULT_MAX_CONNECTIONS})`)
    t.equal(one<IPodDisruptionBudget>(objects, 'PodDisruptionBudget').spec!.maxUnavailable, 1, 'voluntary disruptions take one replica at a time')
  })

  t.test('development: one replica, no autoscaler, no Prometheus Operator objects', async (t) => {
    const objects = rendered[OVERLAYS.development]
    t.equal(one<IDeployment>(objects, 'Deployment', 'smalltalk').spec!.replicas, 1, 'one replica')
    t.same(objects.filter((o) => ['HorizontalPodAutoscaler', 'ServiceMonitor', 'PrometheusRule'].includes(o.kind)), [], 'none of them')
  })

  t.test('monitoring: the ServiceMonitor scrapes the ops port as monitoring/prometheus.yml does, the PrometheusRule is monitoring/alerts.yml', async (t) => {
    const objects = rendered[OVERLAYS.production]
    const service = one<IService>(objects, 'Service', 'smalltalk')
    const monitor = one<IServiceMonitor>(objects, 'ServiceMonitor')
    t.ok(selects(monitor.spec.selector.matchLabels, service.metadata!.labels), 'it selects the Service')
    const endpoint = monitor.spec.endpoints?.[0]
    t.ok(service.spec!.ports!.some((p) => p.name === endpoint?.port), `its endpoint port (${endpoint?.port}) is a Service port`)
    t.equal(endpoint?.port, 'ops', 'the ops port')
    t.equal(endpoint?.path, '/metrics', 'on /metrics')
    const job = service.metadata!.labels![monitor.spec.jobLabel!]
    const selected = new Set(alertRules().flatMap((rule) => [...rule.expr.matchAll(/job="([^"]+)"/g)].map((m) => m[1])))
    t.same([...selected], [job], `the job label is "${job}", the job every alert selects`)
    const scrape = readYaml<{ scrape_configs: Array<{ job_name: string; scrape_interval: string; scrape_timeout: string }> }>('monitoring', 'prometheus.yml').scrape_configs.find((c) => c.job_name === job)
    t.same({ interval: endpoint?.interval, scrapeTimeout: endpoint?.scrapeTimeout }, { interval: scrape?.scrape_interval, scrapeTimeout: scrape?.scrape_timeout }, "the interval and timeout of prometheus.yml's job")

    const rule = one<IPrometheusRule>(objects, 'PrometheusRule')
    t.same(rule.spec.groups, readYaml<{ groups: unknown[] }>('monitoring', 'alerts.yml').groups, 'the PrometheusRule holds exactly the rules of monitoring/alerts.yml')
  })

  t.test('the generated files are up to date (npm run k8s:generate)', async (t) => {
    for (const [file, text] of Object.entries(await generatedFiles())) {
      t.equal(await readFile(file, 'utf8'), text, `${file.slice(file.indexOf('deploy/'))} is what its source generates`)
    }
  })

  t.test('the example Secret is a placeholder', async (t) => {
    const values = Object.entries(SECRET_EXAMPLE.stringData)
    t.ok(values.length > 0, 'it documents the keys')
    for (const [key, value] of values) t.match(value, /REPLACE-ME/, `${key} is a placeholder`)
    const kustomizations = KUSTOMIZATIONS.map((dir) => readRepoFile('deploy', 'kubernetes', dir, 'kustomization.yaml'))
    t.notOk(kustomizations.some((text) => text.includes('secret.example.yaml')), 'no kustomization applies it')
    t.notOk(Object.values(rendered).flat().some((o) => o.kind === 'Secret'), 'no rendered Secret: the real one is created by the operator')
  })
}
