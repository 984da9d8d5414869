-- LongAttn export: the selection written last.
--   :selection  selection table
SELECT selection_id, max(selected_at) AS selected_at
FROM IDENTIFIER(:selection)
GROUP BY selection_id
ORDER BY selected_at DESC, selection_id
LIMIT 1
