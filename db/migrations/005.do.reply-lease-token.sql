-- A reply lease is identified by a token of its own, so that only the request that took it can
-- store its reply or release it (the lease's expiry alone identified it before).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS reply_lease_token uuid;

-- Idempotent outcomes are stored as the domain result ({ "ok": true, "result": ... } or
-- { "ok": false, "failure": { kind, message, code, details } }), mapped to HTTP when replayed.
-- status_code is no longer written; it stays for the replicas of the previous release during a
-- rolling upgrade.
UPDATE idempotency_keys
   SET response = CASE
         WHEN status_code BETWEEN 200 AND 299 THEN jsonb_build_object('ok', true, 'result', response)
         ELSE jsonb_build_object('ok', false, 'failure', jsonb_strip_nulls(jsonb_build_object(
           'kind', CASE status_code
                     WHEN 400 THEN 'invalid' WHEN 404 THEN 'not_found' WHEN 409 THEN 'conflict'
                     WHEN 410 THEN 'gone' WHEN 502 THEN 'bad_gateway' WHEN 504 THEN 'timeout'
                     ELSE 'unavailable' END,
           'message', response->'message',
           'code', response->'code',
           'details', response->'details')))
       END
 WHERE status = 'completed' AND response IS NOT NULL AND NOT (response ? 'ok');
