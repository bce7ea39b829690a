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
})

t.test('with both tools installed it changes nothing', async (t) => {
  if (!haveTool(t, 'docker-compose') || !haveTool(t, 'promtool')) return
  const result = await run('bash', [script], { timeoutMs: 30_000 })
  t.equal(result.code, 0, 'exit code 0', { stderr: result.stderr })
  t.match(result.stdout, /already installed/, 'says there is nothing to do')
  t.notMatch(result.stdout + result.stderr, /apt-get/, 'never calls apt-get')
  t.ok(which('docker-compose') && which('promtool'), 'both tools still on PATH')
})
