import t from 'tap'
import { HistoryPages } from '../../src/messages/history-pages.js'

const SESSION = '7c0e4a8e-0b7e-4d53-9d1e-2f4a0c3b5a61'

t.test('a kept response is served only at the newest seq it was built at', async (t) => {
  const pages = new HistoryPages(1_000_000)
  pages.set(SESSION, 0, 50, 4, Buffer.from('page at 4'))
  t.equal(pages.get(SESSION, 0, 50, 4)?.toString(), 'page at 4')
  t.equal(pages.get(SESSION, 0, 50, 6), undefined, 'the session moved on')
  t.equal(pages.get(SESSION, 0, 20, 4), undefined, 'another window')
  t.equal(pages.get(SESSION, 2, 50, 4), undefined, 'another cursor')
  t.ok(pages.has(SESSION, 0, 50), 'still held until replaced')
  pages.set(SESSION, 0, 50, 6, Buffer.from('page at 6'))
  t.equal(pages.get(SESSION, 0, 50, 6)?.toString(), 'page at 6')
})

t.test('bounded in bytes: the least recently used go first', async (t) => {
  const body = Buffer.alloc(1000, 'x')
  const pages = new HistoryPages(3500)
  for (const after of [0, 1, 2]) pages.set(SESSION, after, 50, 9, body)
  t.ok(pages.get(SESSION, 0, 50, 9), 'read: now the most recent')
  pages.set(SESSION, 3, 50, 9, body)
  t.equal(pages.has(SESSION, 1, 50), false, 'the least recently used was dropped')
  t.ok(pages.has(SESSION, 0, 50) && pages.has(SESSION, 2, 50) && pages.has(SESSION, 3, 50))
  t.ok(pages.bytes <= 3500, `within the budget (${pages.bytes} bytes)`)
})

t.test('a budget of 0 keeps nothing', async (t) => {
  const pages = new HistoryPages(0)
  pages.set(SESSION, 0, 50, 1, Buffer.from('x'))
  t.equal(pages.enabled, false)
  t.equal(pages.get(SESSION, 0, 50, 1), undefined)
})
