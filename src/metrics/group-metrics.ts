import promClient, { type Registry } from 'prom-client'
import { STRATEGIES } from '../groups/group-settings.js'

/** How a round can stop (DESIGN section 9): the `stop` label and the round's `round.stop`. */
export const STOP_REASONS = ['max_turns', 'keyword', 'manager', 'timeout', 'shutdown', 'error'] as const
export type StopReason = (typeof STOP_REASONS)[number]

/** What a speaker selection came to: `ok` (the strategy chose), `fallback` (the manager did not: round-robin chose). */
export const SELECTION_OUTCOMES = ['ok', 'fallback'] as const

/** Group conversation metrics; labels from bounded sets only (stop reasons, strategies, outcomes). */
export class GroupMetrics {
  readonly rounds: promClient.Counter<'stop'>
  readonly turnsPerRound: promClient.Histogram
  readonly selections: promClient.Counter<'strategy' | 'outcome'>

  constructor (registry: Registry) {
    const registers = [registry]
    this.rounds = new promClient.Counter({ name: 'smalltalk_group_rounds_total', help: 'Group rounds finished, by stop reason', labelNames: ['stop'], registers })
    this.turnsPerRound = new promClient.Histogram({
      name: 'smalltalk_group_round_turns',
      help: 'Turns taken per group round (failed turns included)',
      buckets: [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50],
      registers
    })
    this.selections = new promClient.Counter({
      name: 'smalltalk_group_speaker_selections_total',
      help: 'Speakers chosen for group turns, by strategy (round-robin, expertise, manager, mention) and outcome (ok, fallback)',
      labelNames: ['strategy', 'outcome'],
      registers
    })
    for (const stop of STOP_REASONS) this.rounds.inc({ stop }, 0)
    for (const strategy of [...STRATEGIES, 'mention']) for (const outcome of SELECTION_OUTCOMES) this.selections.inc({ strategy, outcome }, 0)
  }
}
