-- LongAttn export: windows and tokens per shard and category, for the manifest, and the
-- tokenizers the windows were cut with.
--   :exported  output of export_windows.sql
SELECT
  shard,
  category,
  count(*)                     AS windows,
  coalesce(sum(n_tokens), 0)   AS tokens,
  collect_set(tokenizer)       AS tokenizers
FROM IDENTIFIER(:exported)
GROUP BY shard, category
ORDER BY shard, category
