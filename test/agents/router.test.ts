import t from 'tap'
import { join } from 'node:path'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { loadManifest } from '../../src/agents/manifest.js'
import { selectAgent } from '../../src/agents/router.js'
import { PROJECT_ROOT } from '../../src/paths.js'

function agent (id: string, expertise: string[], fallback?: string): AgentDefinition {
  const definition: AgentDefinition = {
    id, name: id, description: '', provider: 'echo', model: 'echo', systemPrompt: '', temperature: 0.7, maxTokens: 100, expertise
  }
  if (fallback) definition.fallback = fallback
  return definition
}

const general = agent('general', ['question', 'explain'])
const coder = agent('coder', ['code', 'bug', 'sql', 'stack trace', 'test', 'c++', 'node.js', 'query'], 'general')
const writer = agent('writer', ['write', 'essay', 'blog post', 'grammar', 'poem'], 'general')
const team = [general, coder, writer]

const pick = (content: string, extra: Partial<Parameters<typeof selectAgent>[0]> = {}) =>
  selectAgent({ content, candidates: team, ...extra })

t.test('the requested agent answers, whatever the message says', async (t) => {
  const selection = pick('fix this SQL bug', { requested: 'writer' })
  t.same(selection, { agent: writer, reason: 'requested', matched: [], score: 0 })
})

t.test('a requested agent that is down hands over to its fallback', async (t) => {
  const down = new Set(['writer'])
  const selection = pick('a poem please', { requested: 'writer', isDown: (id) => down.has(id) })
  t.equal(selection.agent.id, 'general')
  t.equal(selection.reason, 'fallback')

  // The chain is followed past a fallback that is down too.
  const chain = [agent('a', [], 'b'), agent('b', [], 'c'), agent('c', [])]
  const deep = selectAgent({ content: 'x', candidates: chain, requested: 'a', isDown: (id) => id !== 'c' })
  t.equal(deep.agent.id, 'c')
  t.equal(deep.reason, 'fallback')

  // Nobody up along the chain: the requested agent is tried anyway.
  const none = pick('a poem', { requested: 'writer', isDown: () => true })
  t.equal(none.agent.id, 'writer')
  t.equal(none.reason, 'requested')
})

t.test('a fallback outside the candidates is found through resolve', async (t) => {
  const onlyCoder = { content: 'x', candidates: [coder], requested: 'coder', isDown: (id: string) => id === 'coder' }
  t.equal(selectAgent(onlyCoder).reason, 'requested', 'without resolve the fallback is unknown')
  const resolve = (id: string) => team.find((a) => a.id === id)
  const selection = selectAgent({ ...onlyCoder, resolve })
  t.equal(selection.agent.id, 'general')
  t.equal(selection.reason, 'fallback')
  t.equal(selectAgent({ content: 'x', candidates: [general], requested: 'writer', resolve }).agent.id, 'writer')
})

t.test('an unknown requested agent or no candidate is an error for the caller', async (t) => {
  t.throws(() => pick('x', { requested: 'nobody' }), { message: 'Unknown agent "nobody"' })
  t.throws(() => selectAgent({ content: 'x', candidates: [] }), { message: 'No agent to choose from' })
})

t.test('expertise scoring: most distinct keywords wins', async (t) => {
  const selection = pick('There is a bug in this SQL query, can you explain it?')
  t.equal(selection.agent.id, 'coder')
  t.equal(selection.reason, 'expertise')
  t.same(selection.matched, ['bug', 'sql', 'query'])
  t.equal(selection.score, 3)

  t.same(pick('Bug bug BUG!!!').score, 1, 'a keyword counts once')
  t.equal(pick('Please write an essay about grammar').agent.id, 'writer')
})

t.test('ties go to the earlier candidate', async (t) => {
  const selection = pick('write code')
  t.equal(selection.agent.id, 'coder', 'coder (1) and writer (1): coder comes first')
  t.equal(selection.score, 1)
  const reversed = selectAgent({ content: 'write code', candidates: [writer, coder] })
  t.equal(reversed.agent.id, 'writer')
})

t.test('no keyword: the first candidate, reason default', async (t) => {
  t.same(pick('Hello there'), { agent: general, reason: 'default', matched: [], score: 0 })
  t.same(pick(''), { agent: general, reason: 'default', matched: [], score: 0 })
})

t.test('matching: words and phrases, not substrings; case, punctuation and plurals do not matter', async (t) => {
  t.equal(pick('decode this').agent.id, 'general', '"code" does not match inside "decode"')
  t.equal(pick('SQL?').agent.id, 'coder', 'punctuation stripped, case folded')
  t.same(pick('my tests fail').matched, ['test'], 'plural "tests" matches "test"')
  t.same(pick('two queries').matched, ['query'], '"queries" matches "query"')
  t.same(pick('here is a STACK TRACE:').matched, ['stack trace'], 'multi-word keyword as a phrase')
  t.same(pick('the stack has no trace').matched, [], 'a phrase needs its words together')
  t.same(pick('a Blog-Post about life').matched, ['blog post'], 'punctuation between the words of a phrase')
  t.same(pick('is C++ faster?').matched, ['c++'])
  t.same(pick('I run node.js').matched, ['node.js'])
})

t.test('Unicode: accents, other scripts, emoji', async (t) => {
  const polyglot = [
    agent('fr', ['café', 'thé']),
    agent('ru', ['тест', 'код']),
    agent('zh', ['代码', '翻译']),
    agent('ar', ['مرحبا']),
    agent('emoji', ['🚀'])
  ]
  const choose = (content: string) => selectAgent({ content, candidates: polyglot })
  t.equal(choose('Un CAFÉ, s’il vous plaît').agent.id, 'fr', 'case folding beyond ASCII')
  t.equal(choose('Un cafe\u0301 noir').agent.id, 'fr', 'decomposed é (e + combining accent) is normalised')
  t.equal(choose('Напиши тест и код').score, 2)
  t.equal(choose('帮我写代码，谢谢').agent.id, 'zh', 'a keyword in a script without spaces matches inside a sentence')
  t.equal(choose('مرحبا بالعالم').agent.id, 'ar', 'right-to-left text')
  t.equal(choose('launch 🚀 now').agent.id, 'fr', 'emoji are not words: no match, default agent')
  t.equal(choose('ｃａｆé').agent.id, 'fr', 'full-width letters are normalised (NFKC)')
})

t.test('down agents are skipped', async (t) => {
  const selection = pick('SQL bug', { isDown: (id) => id === 'coder' })
  t.equal(selection.agent.id, 'general', 'the best scorer is down: the next best (none matched) → default')
  t.equal(selection.reason, 'default')
  const firstDown = pick('hello', { isDown: (id) => id === 'general' })
  t.equal(firstDown.agent.id, 'coder', 'the default is the first candidate that is up')
  const writerUp = pick('SQL in a blog post', { isDown: (id) => id === 'coder' })
  t.equal(writerUp.agent.id, 'writer')
  t.equal(writerUp.reason, 'expertise')
})

t.test('all candidates down: a fallback that is up, else the first candidate', async (t) => {
  const resolve = (id: string) => team.find((a) => a.id === id)
  const selection = selectAgent({ content: 'SQL', candidates: [coder, writer], isDown: (id) => id !== 'general', resolve })
  t.equal(selection.agent.id, 'general')
  t.equal(selection.reason, 'fallback')
  const hopeless = selectAgent({ content: 'SQL', candidates: [coder, writer], isDown: () => true, resolve })
  t.equal(hopeless.agent.id, 'coder')
  t.equal(hopeless.reason, 'default')
})

t.test('the default team routes typical messages to the right specialist', async (t) => {
  const { agents } = await loadManifest(join(PROJECT_ROOT, 'agents', 'default.yaml'))
  const route = (content: string) => selectAgent({ content, candidates: agents }).agent.id
  t.equal(route('Why does my TypeScript function throw this exception?'), 'coder')
  t.equal(route('Write a python function that parses a date'), 'coder', 'write (writer) vs python + function (coder)')
  t.equal(route('Please proofread this email and fix the grammar'), 'writer')
  t.equal(route('Can you explain the difference between the two plans?'), 'assistant')
  t.equal(route('Hello!'), 'assistant', 'no match: the assistant comes first')
})

t.test('deterministic and fast on a long message', async (t) => {
  const content = 'lorem ipsum dolor sit amet '.repeat(1300) + 'sql'
  const started = performance.now()
  const first = pick(content)
  const elapsed = performance.now() - started
  t.same(pick(content), first)
  t.equal(first.agent.id, 'coder')
  t.ok(elapsed < 100, `32 KB scored in ${elapsed.toFixed(1)} ms`)
})
