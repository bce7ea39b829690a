import t from 'tap'
import { haveTool, readRepoFile, run, which } from './support.js'

// scripts/install-deploy-tools.sh (run by .ci/run): valid bash, Debian packages without their
// recommendations, and a no-op when the tools are already there. It is never made to install from
// a test: that is CI's step, as root.

const script = 'scripts/install-deploy-tools.sh'

t.test('the script', async (t) => {
  const syntax = await run('bash', ['-n', script])
  t.equal(syntax.code, 0, 'bash -n: valid syntax', { stderr: syntax.stderr })
  const text = readRepoFile(script)
  t.match(text, /^#!\/usr\/bin\/env bash\n/, 'a bash shebang')
  t.match(text, /set -euo pipefail/, 'stops at the first failure')
  t.match(text, /apt-get install[^\n]*--no-install-recommends/, 'installs with --no-install-recommends')
  t.match(text, /command -v docker-compose/, 'installs docker-compose only when missing')
  t.match(text, /command -v promtool/, 'installs promtool only when missing')
  t.match(text, /packages\+=\(docker-compose\)/, "Debian's docker-compose package")
  t.match(text, /packages\+=\(prometheus\)/, "Debian's prometheus package (promtool)")
  t.match(text, /command -v unshare[^\n]*packages\+=\(util-linux\)/, 'util-linux (unshare) only when missing')
  t.match(text, /command -v script[^\n]*packages\+=\(bsdutils\)/, 'bsdutils (script) only when missing')
  t.match(text, /has_kustomize_v5 \|\| packages\+=\(kubectl\)/, 'kubectl only when no kubectl with kustomize v5 is there')
  t.match(text, /! has_candidate kubectl[\s\S]*exit 1/, 'and fails, saying why, when no apt source offers kubectl')
})

const TOOLS = ['docker-compose', 'promtool', 'unshare', 'script', 'kubectl']

t.test('with every tool installed it changes nothing', async (t) => {
  if (!TOOLS.every((tool) => haveTool(t, tool))) return
  const result = await run('bash', [script], { timeoutMs: 30_000 })
  t.equal(result.code, 0, 'exit code 0', { stderr: result.stderr })
  t.match(result.stdout, /already installed/, 'says there is nothing to do')
  t.notMatch(result.stdout + result.stderr, /apt-get/, 'never calls apt-get')
  t.ok(TOOLS.every((tool) => which(tool)), 'every tool still on PATH')
})

// scripts/install-browser.sh (run by .ci/run): Debian's chromium for the chat page's browser tests.
const browserScript = 'scripts/install-browser.sh'

t.test('the browser script', async (t) => {
  const syntax = await run('bash', ['-n', browserScript])
  t.equal(syntax.code, 0, 'bash -n: valid syntax', { stderr: syntax.stderr })
  const text = readRepoFile(browserScript)
  t.match(text, /^#!\/usr\/bin\/env bash\n/, 'a bash shebang')
  t.match(text, /set -euo pipefail/, 'stops at the first failure')
  t.match(text, /apt-get install[^\n]*--no-install-recommends[^\n]*\bchromium\b/, "Debian's chromium, without its recommendations")
  t.match(readRepoFile('.ci/run'), /bash scripts\/install-browser\.sh/, '.ci/run runs it')
})

t.test('with chromium installed the browser script changes nothing', async (t) => {
  if (!haveTool(t, 'chromium')) return
  const result = await run('bash', [browserScript], { timeoutMs: 30_000 })
  t.equal(result.code, 0, 'exit code 0', { stderr: result.stderr })
  t.match(result.stdout, /already installed/, 'says there is nothing to do')
  t.notMatch(result.stdout + result.stderr, /apt-get/, 'never calls apt-get')
})
