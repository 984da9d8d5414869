-- Report: the selections of one scorer in a selection table, newest first.
--   :selection  selection table   :scorer_id  the scorer
SELECT
  selection_id,
  max(selected_at)     AS selected_at,
  max(params)          AS params,
  max(windows_version) AS windows_version,
  max(scores_version)  AS scores_version,
  count(*)             AS windows,
  count_if(selected)   AS selected
FROM IDENTIFIER(:selection)
WHERE scorer_id = :scorer_id
GROUP BY selection_id
ORDER BY selected_at DESC, selection_id
