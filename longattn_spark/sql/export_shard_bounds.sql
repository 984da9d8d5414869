-- LongAttn export: shard boundaries, quantiles of a hash of window_id over the kept windows,
-- so that shards hold about equal numbers of windows (exactly equal up to one window while
-- the selection is smaller than :accuracy).
--   :selection, :selection_id
--   :percentages  1/N, 2/N, ..., (N-1)/N for N shards
--   :accuracy     percentile_approx accuracy
SELECT percentile_approx(CAST(xxhash64(window_id) AS DOUBLE), :percentages, :accuracy) AS bounds
FROM IDENTIFIER(:selection)
WHERE selection_id = :selection_id AND selected
