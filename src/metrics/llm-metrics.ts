import promClient, { type Registry } from 'prom-client'
import type { AgentStatus } from '../agents/agent.js'

/** Outcomes of one provider call (one attempt). */
export const LLM_OUTCOMES = ['ok', 'error', 'timeout', 'rate_limited', 'circuit_open', 'cancelled'] as const
export type LlmOutcome = (typeof LLM_OUTCOMES)[number]

export const BREAKER_STATES = ['closed', 'open', 'half_open'] as const
export type BreakerState = (typeof BREAKER_STATES)[number]

export const AGENT_STATES: readonly AgentStatus[] = ['healthy', 'degraded', 'down']

/** What the metrics need to know of one agent: all of it comes from the manifest (a bounded set). */
export interface MeteredAgent {
  id: string
  /** The provider that really answers (echo when the manifest's cannot run here). */
  provider: string
  model: string
  fallback?: string | undefined
}

/**
 * The LLM and agent metrics (DESIGN section 5, issue 5). Label values come from the manifest only:
 * provider names, model names and agent ids, plus the fixed sets above; never user input.
 * Every series exists from start-up with a zero value, so dashboards and alerts see it before traffic.
 */
export class LlmMetrics {
  /** One provider call (an attempt: a retry counts again), by outcome. */
  readonly requests: promClient.Counter<'provider' | 'model' | 'outcome'>
  /** Time of a successful provider call, from the request to the last chunk. */
  readonly duration: promClient.Histogram<'provider' | 'model'>
  /** Time from the request to the first text delta. */
  readonly timeToFirstToken: promClient.Histogram<'provider' | 'model'>
  readonly tokens: promClient.Counter<'provider' | 'model' | 'kind'>
  readonly retries: promClient.Counter<'provider' | 'model'>
  readonly fallbacks: promClient.Counter<'agent' | 'fallback'>
  /** LLM router decisions: ok (the router's pick was used) or fallback (scoring was used instead). */
  readonly routerDecisions: promClient.Counter<'outcome'>
  private readonly breakerState: promClient.Gauge<'provider' | 'model' | 'state'>
  private readonly agentState: promClient.Gauge<'agent' | 'state'>

  constructor (registry: Registry, agents: MeteredAgent[]) {
    const registers = [registry]
    this.requests = new promClient.Counter({
      name: 'smalltalk_llm_requests_total',
      help: 'LLM provider calls (each retry counts), by provider, model and outcome',
      labelNames: ['provider', 'model', 'outcome'],
      registers
    })
    this.duration = new promClient.Histogram({
      name: 'smalltalk_llm_request_duration_seconds',
      help: 'Duration of successful LLM provider calls, from the request to the last chunk',
      labelNames: ['provider', 'model'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120],
      registers
    })
    this.timeToFirstToken = new promClient.Histogram({
      name: 'smalltalk_llm_time_to_first_token_seconds',
      help: 'Time from a streamed LLM provider call (SSE replies) to its first text delta',
      labelNames: ['provider', 'model'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers
    })
    this.tokens = new promClient.Counter({
      name: 'smalltalk_llm_tokens_total',
      help: 'Tokens reported by LLM providers, by provider, model and kind (input, output)',
      labelNames: ['provider', 'model', 'kind'],
      registers
    })
    this.retries = new promClient.Counter({
      name: 'smalltalk_llm_retries_total',
      help: 'LLM provider calls retried after a retryable error (before the first token)',
      labelNames: ['provider', 'model'],
      registers
    })
    this.fallbacks = new promClient.Counter({
      name: 'smalltalk_agent_fallbacks_total',
      help: 'Replies given by an agent\'s fallback because the agent was down or failed before its first token',
      labelNames: ['agent', 'fallback'],
      registers
    })
    this.routerDecisions = new promClient.Counter({
      name: 'smalltalk_router_decisions_total',
      help: 'LLM router (ROUTER=llm) decisions: ok when its pick was used, fallback when scoring decided',
      labelNames: ['outcome'],
      registers
    })
    this.breakerState = new promClient.Gauge({
      name: 'smalltalk_llm_circuit_state',
      help: 'Circuit breaker per provider and model: 1 for the current state (closed, open, half_open), 0 for the others',
      labelNames: ['provider', 'model', 'state'],
      registers
    })
    this.agentState = new promClient.Gauge({
      name: 'smalltalk_agent_health_state',
      help: 'Agent health: 1 for the current state (healthy, degraded, down), 0 for the others',
      labelNames: ['agent', 'state'],
      registers
    })

    for (const outcome of ['ok', 'fallback']) this.routerDecisions.inc({ outcome }, 0)
    const models = new Set<string>()
    for (const agent of agents) {
      const labels = { provider: agent.provider, model: agent.model }
      const key = `${agent.provider}\u0000${agent.model}`
      if (!models.has(key)) {
        models.add(key)
        for (const outcome of LLM_OUTCOMES) this.requests.inc({ ...labels, outcome }, 0)
        for (const kind of ['input', 'output']) this.tokens.inc({ ...labels, kind }, 0)
        this.retries.inc(labels, 0)
        this.duration.zero(labels)
        this.timeToFirstToken.zero(labels)
        this.setBreakerState(agent.provider, agent.model, 'closed')
      }
      this.setAgentState(agent.id, 'healthy')
      if (agent.fallback) this.fallbacks.inc({ agent: agent.id, fallback: agent.fallback }, 0)
    }
  }

  setBreakerState (provider: string, model: string, current: BreakerState): void {
    for (const state of BREAKER_STATES) this.breakerState.set({ provider, model, state }, state === current ? 1 : 0)
  }

  setAgentState (agent: string, current: AgentStatus): void {
    for (const state of AGENT_STATES) this.agentState.set({ agent, state }, state === current ? 1 : 0)
  }
}
