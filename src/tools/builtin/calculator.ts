/**
 * The built-in calculator's arithmetic: + - * / % ^, parentheses, unary minus and decimals, by a
 * recursive-descent parser (the expression comes from a model: it is parsed, never evaluated as code).
 *
 *   sum     := product (("+" | "-") product)*
 *   product := unary (("*" | "/" | "%") unary)*
 *   unary   := ("-" | "+") unary | power
 *   power   := primary ("^" unary)?        right-associative: 2^3^2 = 2^9; -2^2 = -(2^2)
 *   primary := number | "(" sum ")"
 */

export class CalculatorError extends Error {}

const MAX_LENGTH = 1_000
/** Nesting deeper than this is refused rather than allowed to exhaust the stack. */
const MAX_DEPTH = 100

export function calculate (expression: string): number {
  if (expression.length > MAX_LENGTH) throw new CalculatorError(`the expression is longer than ${MAX_LENGTH} characters`)
  const parser = new Parser(expression)
  const value = parser.parse()
  if (!Number.isFinite(value)) throw new CalculatorError('the result is not a finite number')
  return value
}

/** The result as a model reads it: 15 significant digits, so 0.1 + 0.2 is 0.3. */
export function formatResult (value: number): string {
  return String(Number(value.toPrecision(15)))
}

class Parser {
  private position = 0
  private depth = 0

  constructor (private readonly text: string) {}

  parse (): number {
    this.skipSpaces()
    if (this.position === this.text.length) throw new CalculatorError('the expression is empty')
    const value = this.sum()
    if (this.position < this.text.length) throw this.unexpected()
    return value
  }

  private sum (): number {
    let value = this.product()
    for (let op = this.peek(); op === '+' || op === '-'; op = this.peek()) {
      this.advance()
      const right = this.product()
      value = op === '+' ? value + right : value - right
    }
    return value
  }

  private product (): number {
    let value = this.unary()
    for (let op = this.peek(); op === '*' || op === '/' || op === '%'; op = this.peek()) {
      this.advance()
      const right = this.unary()
      if ((op === '/' || op === '%') && right === 0) throw new CalculatorError(op === '/' ? 'division by zero' : 'modulo by zero')
      value = op === '*' ? value * right : op === '/' ? value / right : value % right
    }
    return value
  }

  private unary (): number {
    const op = this.peek()
    if (op === '-' || op === '+') {
      this.advance()
      const value = this.nested(() => this.unary())
      return op === '-' ? -value : value
    }
    return this.power()
  }

  private power (): number {
    const base = this.primary()
    if (this.peek() !== '^') return base
    this.advance()
    return base ** this.nested(() => this.unary())
  }

  private primary (): number {
    const char = this.peek()
    if (char === '(') {
      this.advance()
      const value = this.nested(() => this.sum())
      if (this.peek() !== ')') throw this.unexpected('")"')
      this.advance()
      return value
    }
    const match = /^(?:\d+(?:\.\d*)?|\.\d+)/.exec(this.text.slice(this.position))
    if (!match) throw this.unexpected('a number or "("')
    this.position += match[0].length
    this.skipSpaces()
    return Number(match[0])
  }

  private nested (parse: () => number): number {
    if (++this.depth > MAX_DEPTH) throw new CalculatorError(`the expression is nested deeper than ${MAX_DEPTH} levels`)
    try {
      return parse()
    } finally {
      this.depth--
    }
  }

  private peek (): string | undefined {
    return this.text[this.position]
  }

  private advance (): void {
    this.position++
    this.skipSpaces()
  }

  private skipSpaces (): void {
    while (this.position < this.text.length && /\s/.test(this.text[this.position]!)) this.position++
  }

  private unexpected (expected?: string): CalculatorError {
    const found = this.position < this.text.length ? `"${this.text[this.position]}" at position ${this.position + 1}` : 'the end of the expression'
    return new CalculatorError(`unexpected ${found}${expected ? `, expected ${expected}` : ''}`)
  }
}
