import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { ConfigError } from '../../src/config.js'
import { LimitTable, loadTenantOverrides, parseTenantOverrides } from '../../src/limits/tenant-limits.js'
import { tempDir, testEnv } from '../helper.js'

// TENANTS_FILE (issue 13): per-tenant overrides of the four limits, validated at start-up like the
// agents manifest: a problem names the file, the tenant and the field.

const parse = (text: string) => parseTenantOverrides(text, 'tenants.yaml')

t.test('overrides take what they name, the defaults the rest', async (t) => {
  const overrides = parse('tenants:\n  acme:\n    rateLimitPerMinute: 600\n    tokenBudgetPerDay: 0\n  globex: {}\n')
  const table = new LimitTable({ rateLimitPerMinute: 60, messageRatePerMinute: 10, maxStreams: 5, tokenBudgetPerDay: 1000 }, overrides)
  t.same(table.of('acme'), { rateLimitPerMinute: 600, messageRatePerMinute: 10, maxStreams: 5, tokenBudgetPerDay: 0 })
  t.same(table.of('globex'), table.defaults)
  t.same(table.of('unknown'), table.defaults)
  t.same(table.namedTenants, ['acme', 'globex'])
  t.equal(new LimitTable({ rateLimitPerMinute: 0, messageRatePerMinute: 0, maxStreams: 0, tokenBudgetPerDay: 0 }, overrides).anyLimits('rateLimitPerMinute'), true, 'an override alone turns a limit on')
  t.equal(new LimitTable({ rateLimitPerMinute: 0, messageRatePerMinute: 0, maxStreams: 0, tokenBudgetPerDay: 0 }).anyLimits('maxStreams'), false)
})

t.test('every problem is named: file, tenant, field, value', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['tenants: [a', /^TENANTS_FILE tenants\.yaml: invalid YAML/],
    ['limits: {}', /expected a YAML mapping with a "tenants:" mapping/],
    ['tenants: [acme]', /expected a YAML mapping with a "tenants:" mapping/],
    ['tenants:\n  acme: 5\n', /tenant "acme": must be a mapping of limits \(rateLimitPerMinute, messageRatePerMinute, maxStreams, tokenBudgetPerDay\)/],
    ['tenants:\n  acme:\n    rateLimit: 5\n', /tenant "acme": unknown field "rateLimit"/],
    ['tenants:\n  acme:\n    maxStreams: -1\n', /tenant "acme": maxStreams must be a whole number, 0 \(unlimited\) or more \(got -1\)/],
    ['tenants:\n  acme:\n    tokenBudgetPerDay: 1.5\n', /tokenBudgetPerDay must be a whole number.*\(got 1\.5\)/],
    ['tenants:\n  acme:\n    messageRatePerMinute: lots\n', /messageRatePerMinute must be a whole number.*\(got "lots"\)/],
    ['tenants:\n  "bad tenant":\n    maxStreams: 1\n', /tenant "bad tenant": invalid tenant id/]
  ]
  for (const [text, message] of cases) t.throws(() => parse(text), { name: 'ConfigError', message }, text)
  t.throws(() => parse('tenants:\n  a:\n    maxStreams: -1\n  b:\n    nope: 1\n'), { message: /tenant "a": .*; tenant "b": / }, 'all problems at once')
})

t.test('the file is read at start-up: a missing or bad one stops the service', async (t) => {
  const dir = await tempDir(t)
  await t.rejects(loadTenantOverrides(join(dir, 'missing.yaml')), { message: /missing\.yaml: cannot read the tenants file \(file not found\)/ })
  await mkdir(join(dir, 'folder'))
  await t.rejects(loadTenantOverrides(join(dir, 'folder')), { message: /is a directory, not a file/ })
  const bad = join(dir, 'bad.yaml')
  await writeFile(bad, 'tenants:\n  acme:\n    maxStreams: many\n')
  const env = await testEnv(t, { TENANTS_FILE: bad })
  const started = buildApp({ env, logger: false })
  await t.rejects(started, ConfigError)
  await t.rejects(started, { message: /bad\.yaml: tenant "acme": maxStreams must be a whole number/ })
})
