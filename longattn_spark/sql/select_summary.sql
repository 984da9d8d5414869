-- LongAttn selection: what one selection holds, per category and exclusion reason.
--   :selection     selection table
--   :selection_id  the selection
-- cut_lds is the smallest LDS among the kept windows (the effective cut of an LDS selection).
SELECT
  category,
  excluded_reason,
  count(*)                                           AS windows,
  count_if(selected)                                 AS selected,
  coalesce(sum(n_tokens), 0)                         AS tokens,
  coalesce(sum(n_tokens) FILTER (WHERE selected), 0) AS tokens_selected,
  min(lds) FILTER (WHERE selected)                   AS cut_lds
FROM IDENTIFIER(:selection)
WHERE selection_id = :selection_id
GROUP BY category, excluded_reason
ORDER BY category, excluded_reason
