-- LongAttn selection, exact cut, one refinement pass: windows and tokens per equal-width
-- bucket of the bracket. A grouped aggregate (partial sums in every task, a small shuffle of
-- at most categories x buckets rows): no category is gathered into one task.
--   :bracketed  output of select_bracketed.sql
--   :buckets    buckets per bracket
SELECT
  category,
  width_bucket(bracket_key, lo, hi, :buckets) AS bucket,
  count(*)                                    AS n,
  sum(n_tokens)                               AS tokens,
  min(bracket_key)                            AS key_min,
  max(bracket_key)                            AS key_max
FROM IDENTIFIER(:bracketed)
GROUP BY category, bucket
