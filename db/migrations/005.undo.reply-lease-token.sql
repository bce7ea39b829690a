-- Back to HTTP outcomes (status_code + the answered body) for the previous release.
UPDATE idempotency_keys k
   SET status_code = v.status, response = v.body
  FROM (
    SELECT tenant, key,
           CASE WHEN (response->>'ok')::boolean THEN 201 ELSE
             CASE response->'failure'->>'kind'
               WHEN 'invalid' THEN 400 WHEN 'not_found' THEN 404 WHEN 'conflict' THEN 409 WHEN 'busy' THEN 409
               WHEN 'gone' THEN 410 WHEN 'bad_gateway' THEN 502 WHEN 'timeout' THEN 504 ELSE 503 END
           END AS status,
           response
      FROM idempotency_keys WHERE status = 'completed' AND response ? 'ok'
  ) AS o(tenant, key, status, response),
  LATERAL (SELECT o.status,
                  CASE WHEN (o.response->>'ok')::boolean THEN o.response->'result'
                       ELSE jsonb_strip_nulls(jsonb_build_object('statusCode', o.status, 'message', o.response->'failure'->'message',
                              'code', o.response->'failure'->'code', 'details', o.response->'failure'->'details')) END) AS v(status, body)
 WHERE k.tenant = o.tenant AND k.key = o.key;
ALTER TABLE sessions DROP COLUMN IF EXISTS reply_lease_token;
