-- LongAttn export: what one selection read and kept.
--   :selection     selection table
--   :selection_id  the selection
SELECT
  count(*)                                           AS windows,
  count_if(selected)                                 AS selected,
  coalesce(sum(n_tokens) FILTER (WHERE selected), 0) AS tokens_selected,
  max(windows_version)                               AS windows_version,
  max(scores_version)                                AS scores_version,
  max(scorer_id)                                     AS scorer_id,
  max(params)                                        AS params
FROM IDENTIFIER(:selection)
WHERE selection_id = :selection_id
