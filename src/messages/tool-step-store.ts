import { randomUUID } from 'node:crypto'
import type { AgentDefinition } from '../agents/agent.js'
import { DomainError, type Failure } from '../domain-errors.js'
import type { NewEvent } from '../events/event-log.js'
import { exchangeMetadata, type PlannedCall, type ToolExchange } from '../tools/tool-steps.js'
import type { Message } from './message-store.js'
import type { ToolStepStore } from './reply-producer.js'
import type { Lease } from './reply-repository.js'

/** What a lease-holding reply needs to keep its tool steps: ReplyRepository, or a stateless round's stand-in. */
export interface ToolMessageRepository {
  record(events: NewEvent[]): Promise<void>
  storeToolMessages(lease: Lease, agentId: string, exchanges: ToolExchange[]): Promise<Message[] | undefined>
  whyNotStored(lease: Lease): Promise<Failure>
}

/**
 * The tool steps of a reply under `lease`: tool.called events before the calls, the results stored
 * as tool messages after them (then `onStored`, the cache writes, in order); a step that cannot be
 * stored (the lease lost, the session ended) throws why, and nothing more is called.
 */
export function leaseToolSteps (repository: ToolMessageRepository, tenant: string, lease: Lease, onStored: (messages: Message[]) => Promise<void>): ToolStepStore {
  return {
    called: (agent: AgentDefinition, calls: PlannedCall[]) => repository.record(calls.map(({ request, target }): NewEvent => ({
      type: 'tool.called',
      tenant,
      sessionId: lease.session.id,
      agentId: agent.id,
      data: { callId: request.id, tool: target?.tool ?? request.name, server: target?.server ?? '', messageId: lease.message.id }
    }))),
    finished: async (agent: AgentDefinition, exchanges: ToolExchange[]) => {
      const messages = await repository.storeToolMessages(lease, agent.id, exchanges)
      if (!messages) throw DomainError.from(await repository.whyNotStored(lease))
      await onStored(messages)
    }
  }
}

/** Tool messages kept nowhere (a stateless request): they exist only in the answer. */
export function transientToolMessages (agentId: string, exchanges: ToolExchange[], nextSeq: () => number, now: () => number): Message[] {
  return exchanges.map((exchange) => ({
    id: randomUUID(),
    seq: nextSeq(),
    role: 'tool',
    content: exchange.content,
    metadata: exchangeMetadata(exchange),
    createdAt: new Date(now()).toISOString(),
    agent: agentId,
    latencyMs: exchange.latencyMs
  }))
}

/**
 * Tool steps kept nowhere (a stateless OpenAI-compatible request): the calls still run and their
 * results reach the model; they exist only for this reply.
 */
export const EPHEMERAL_TOOL_STEPS: ToolStepStore = { called: async () => undefined, finished: async () => undefined }
