-- LongAttn export: the kept windows of one selection with their token ids and shard.
--   :selection, :selection_id
--   :windows  windows table, read at the version the selection read
--   :bounds   shard boundaries (export_shard_bounds.sql); shard = number of bounds below the key
SELECT
  w.window_id                                          AS id,
  w.category,
  w.n_tokens,
  w.input_ids,
  w.tokenizer,
  CAST(xxhash64(w.window_id) AS DOUBLE)                AS shard_key,
  size(filter(CAST(:bounds AS ARRAY<DOUBLE>),
              b -> b < CAST(xxhash64(w.window_id) AS DOUBLE))) AS shard
FROM IDENTIFIER(:selection) AS s
JOIN IDENTIFIER(:windows) AS w
  ON w.window_id = s.window_id
WHERE s.selection_id = :selection_id AND s.selected
