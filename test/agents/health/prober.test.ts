import t from 'tap'
import { redactSecrets } from '../../../src/agents/health/prober.js'

const KEY = 'sk-test-health-secret-0123456789'

t.test('error texts lose the keys and anything shaped like one', async (t) => {
  t.equal(redactSecrets(`401 Incorrect API key provided: ${KEY}`, [KEY]), '401 Incorrect API key provided: [redacted]')
  t.equal(redactSecrets('bad key sk-proj-abcdefghijklmnop and sk-ant-api03-xyzxyzxyzxyz'), 'bad key [redacted] and [redacted]')
  t.equal(redactSecrets('GET https://g.example/v1beta/models?key=AIzaSyA0123456789abcdefghij&alt=sse'), 'GET https://g.example/v1beta/models?key=[redacted]&alt=sse')
  t.equal(redactSecrets('Authorization: Bearer abc.def-ghi'), 'Authorization: Bearer [redacted]')
  t.equal(redactSecrets('connect to http://user:hunter2@10.0.0.1:8080 failed'), 'connect to http://user:[redacted]@10.0.0.1:8080 failed')
  t.equal(redactSecrets('x'.repeat(600)).length, 500, 'long texts are cut')
})
