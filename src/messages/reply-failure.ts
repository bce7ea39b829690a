import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition } from '../agents/agent.js'
import { CircuitOpenError } from '../agents/provider-guard.js'
import { databaseUnavailable, isDatabaseUnavailable } from '../db/errors.js'
import { DomainError } from '../domain-errors.js'
import { ProviderError } from '../providers/provider.js'
import { ProduceFailed } from './reply-producer.js'

export interface FailureContext {
  /** The agent the client was told answers. */
  agent: AgentDefinition
  /** The stored user message: `details.messageId` tells the caller it was kept (none for a stateless reply). */
  messageId?: string | undefined
  llmTimeoutMs: number
  shuttingDown: boolean
  log: FastifyBaseLogger
}

/**
 * The client-facing failure of a reply that could not be produced. A provider's auth or request
 * error names the agent (bad_gateway), the deadline is a timeout, exhausted retries a bad_gateway,
 * every breaker open `unavailable` with a retry delay, a stream broken after its first delta a
 * bad_gateway that says the partial text was not kept.
 */
export function describeReplyFailure (err: unknown, context: FailureContext): DomainError {
  const { agent, log } = context
  const details: Record<string, unknown> = context.messageId === undefined ? {} : { messageId: context.messageId }
  const failures = err instanceof ProduceFailed ? err.failures : [err]
  const streamed = err instanceof ProduceFailed && err.afterFirstDelta
  const last = failures[failures.length - 1]
  if (last instanceof DomainError) return new DomainError(last.kind, last.message, { ...last.extra, details })
  if (isDatabaseUnavailable(last)) return new DomainError('unavailable', databaseUnavailable().message, { ...databaseUnavailable().extra, details })
  if (context.shuttingDown) {
    return new DomainError('unavailable', 'The server is shutting down; the reply was not finished. Retry the message.', { code: 'SHUTTING_DOWN', retryAfterSeconds: 1, details })
  }
  const name = (last as Error | undefined)?.name
  if (name === 'TimeoutError' || name === 'AbortError') {
    return new DomainError('timeout', `Agent "${agent.id}" did not finish its reply within ${context.llmTimeoutMs} ms`, { code: 'LLM_TIMEOUT', details })
  }
  const tried = failures.length > 1 ? ` (its fallback${failures.length > 2 ? 's' : ''} failed too)` : ''
  if (streamed) {
    log.warn({ err: describeError(last), agent: agent.id }, 'agent reply broke off mid-stream')
    return new DomainError('bad_gateway', `Agent "${agent.id}"'s reply broke off before it was finished (${describeError(last).message}); the partial reply was not stored. Retry the message.`, { code: 'LLM_STREAM_INTERRUPTED', details })
  }
  if (failures.every((failure) => failure instanceof CircuitOpenError)) {
    const waitMs = Math.min(...failures.map((failure) => (failure as CircuitOpenError).retryAfterMs))
    return new DomainError('unavailable', `Agent "${agent.id}" is unavailable: its provider failed repeatedly and is paused${tried}. Retry later.`, {
      code: 'LLM_UNAVAILABLE',
      retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)),
      details
    })
  }
  // The first real provider error says most about the agent the client got.
  const cause = failures.find((failure) => !(failure instanceof CircuitOpenError)) ?? last
  log.warn({ err: describeError(cause), agent: agent.id, attempts: failures.length }, 'agent reply failed')
  if (cause instanceof ProviderError) {
    details.provider = cause.provider
    if (cause.status !== undefined) details.providerStatus = cause.status
    if (cause.kind === 'auth') {
      return new DomainError('bad_gateway', `Agent "${agent.id}": ${cause.provider} refused the credentials${cause.status ? ` (${cause.status})` : ''}; check the provider's API key${tried}`, { code: 'LLM_AUTH_ERROR', details })
    }
    if (cause.kind === 'bad_request') {
      return new DomainError('bad_gateway', `Agent "${agent.id}": ${cause.provider} rejected the request: ${cause.message}${tried}`, { code: 'LLM_REQUEST_REJECTED', details })
    }
    return new DomainError('bad_gateway', `Agent "${agent.id}" failed to reply after retries: ${cause.message}${tried}`, { code: 'LLM_ERROR', details })
  }
  return new DomainError('bad_gateway', `Agent "${agent.id}" failed to reply: ${describeError(cause).message}${tried}`, { code: 'LLM_ERROR', details })
}

function describeError (err: unknown): { name: string; message: string } {
  return err instanceof Error ? { name: err.name, message: err.message } : { name: 'Error', message: String(err) }
}
