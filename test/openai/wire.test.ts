import t from 'tap'
import { openAiError } from '../../src/openai/wire.js'

t.test('the service\'s error bodies in OpenAI\'s shape', async (t) => {
  t.same(openAiError({ statusCode: 401, error: 'Unauthorized', message: 'Invalid API key' }), { error: { message: 'Invalid API key', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } })
  t.same(openAiError({ statusCode: 429, error: 'Too Many Requests', message: 'slow down', code: 'RATE_LIMITED' }).error, { message: 'slow down', type: 'rate_limit_error', param: null, code: 'rate_limited' })
  t.same(openAiError({ statusCode: 429, error: 'Too Many Requests', message: 'slow down' }).error.code, 'rate_limit_exceeded')
  t.match(openAiError({ statusCode: 504, error: 'Gateway Timeout', message: 'late', code: 'LLM_TIMEOUT', details: { messageId: 'x' } }).error, { type: 'server_error', code: 'llm_timeout', param: null })
  t.match(openAiError({ statusCode: 400, error: 'Bad Request', message: 'bad', code: 'FST_ERR_VALIDATION', details: [{ field: '/messages/12/content/0/text' }] }).error, { param: 'messages[12].content[0].text', code: null })
  t.match(openAiError({ statusCode: 400, error: 'Bad Request', message: 'bad', details: [{ field: '/' }] }).error, { param: null })
  t.match(openAiError({ statusCode: 400, error: 'Bad Request', message: 'bad', details: [{ field: '/stream_options/include_usage' }] }).error, { param: 'stream_options.include_usage' })
})
