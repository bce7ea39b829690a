import t from 'tap'
import { calculate, CalculatorError, formatResult } from '../../src/tools/builtin/calculator.js'
import { currentTime } from '../../src/tools/builtin/current-time.js'

t.test('arithmetic: precedence, associativity, parentheses, unary minus, decimals', async (t) => {
  const cases: Array<[string, number]> = [
    ['2+3', 5],
    ['2 + 3 * 4', 14],
    ['(2 + 3) * 4', 20],
    ['10 - 4 - 3', 3],
    ['100 / 10 / 5', 2],
    ['7 % 4 * 2', 6],
    ['2 ^ 3 ^ 2', 512],
    ['-2 ^ 2', -4],
    ['(-2) ^ 2', 4],
    ['2 ^ -1', 0.5],
    ['--3', 3],
    ['-(1 + 2) * +3', -9],
    ['.5 + 1.25 + 2.', 3.75],
    [' ( ( 1 ) ) ', 1],
    ['3 * -2', -6]
  ]
  for (const [expression, expected] of cases) t.equal(calculate(expression), expected, expression)
  t.equal(formatResult(calculate('0.1 + 0.2')), '0.3', 'rounded to 15 significant digits')
  t.equal(formatResult(calculate('1 / 3')), '0.333333333333333')
})

t.test('errors say what is wrong, and nothing is evaluated as code', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['1 / 0', /division by zero/],
    ['5 % (2 - 2)', /modulo by zero/],
    ['', /empty/],
    ['2 +', /unexpected the end of the expression, expected a number/],
    ['(1 + 2', /expected "\)"/],
    ['1 + 2)', /unexpected "\)" at position 6/],
    ['2 ** 3', /unexpected "\*" at position 4, expected a number or "\("/],
    ['process.exit(1)', /unexpected "p" at position 1/],
    ['1e3', /unexpected "e"/],
    ['10 ^ 400', /not a finite number/],
    ['('.repeat(200) + '1' + ')'.repeat(200), /nested deeper than 100/],
    ['1+'.repeat(600) + '1', /longer than 1000/]
  ]
  for (const [expression, message] of cases) t.throws(() => calculate(expression), { constructor: CalculatorError, message }, expression.slice(0, 30))
})

t.test('current time in a zone, with its offset', async (t) => {
  const instant = new Date('2025-07-01T12:34:56Z')
  t.same(currentTime('UTC', instant), { iso: '2025-07-01T12:34:56+00:00', timeZone: 'UTC' })
  t.same(currentTime('Europe/Paris', instant), { iso: '2025-07-01T14:34:56+02:00', timeZone: 'Europe/Paris' })
  t.same(currentTime('America/New_York', new Date('2025-01-01T03:00:00Z')), { iso: '2024-12-31T22:00:00-05:00', timeZone: 'America/New_York' })
  t.throws(() => currentTime('Mars/Olympus', instant), { name: 'RangeError', message: /unknown time zone "Mars\/Olympus"/ })
})
