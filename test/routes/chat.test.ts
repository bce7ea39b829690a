import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { CHAT_DIR } from '../../routes/chat/index.js'
import { buildService, testEnv } from '../helper.js'

// The chat page's files as the api instance serves them (the page itself: test/chat/).

t.test('/chat and its files: public, typed, under a strict CSP; nothing else from the folder', async (t) => {
  const { app, ops } = await buildService(t, await testEnv(t, { API_KEYS: 'k:tenant' }))
  const page = await app.inject('/chat?session=8d1f6c8e-0000-4000-8000-000000000000')
  t.equal(page.statusCode, 200, 'the page needs no key (its API calls carry it)')
  t.match(page.headers['content-type'], /^text\/html/)
  t.equal(page.body, readFileSync(join(CHAT_DIR, 'index.html'), 'utf8'), 'index.html as it is')
  const csp = String(page.headers['content-security-policy'])
  t.match(csp, /default-src 'none'/, 'a CSP that allows nothing by default')
  t.match(csp, /script-src 'self'(;|$)/, "scripts from the page's own origin only, no inline script")
  t.match(csp, /connect-src 'self'(;|$)/, 'and calls to its own origin only')
  t.equal(page.headers['x-content-type-options'], 'nosniff')
  t.ok(page.headers.etag, 'with an ETag, so a reload revalidates cheaply')

  for (const file of readdirSync(CHAT_DIR).filter((name) => name !== 'index.html')) {
    const res = await app.inject(`/chat/${file}`)
    t.equal(res.statusCode, 200, `/chat/${file}`)
    t.match(res.headers['content-type'], file.endsWith('.css') ? /^text\/css/ : /^(text|application)\/javascript/, `${file} has its type`)
    t.notMatch(res.body, /https?:\/\/(?!127\.0\.0\.1)/, `${file} names no other host`)
  }
  const html = page.body
  t.notMatch(html, /<script(?![^>]*\bsrc="\/chat\/)/, 'no inline script in the page')
  t.notMatch(html, /https?:\/\//, 'no absolute URL in the page (no CDN)')

  for (const url of ['/chat/nope.js', '/chat/..%2Fpackage.json', '/chat/index.html', '/chat/%2e%2e%2fsrc%2fapp.ts']) {
    const res = await app.inject(url)
    t.equal(res.statusCode, 404, `${url}: 404`)
    t.equal(res.json().error, 'Not Found', 'with the JSON error body')
  }
  t.equal((await app.inject({ method: 'POST', url: '/chat' })).statusCode, 404, 'POST /chat: no such route')
  t.equal((await ops.inject('/chat')).statusCode, 404, 'the ops port does not serve the page')
  t.equal((await app.inject('/v1/agents')).statusCode, 401, 'while /v1 still needs the key')
})
