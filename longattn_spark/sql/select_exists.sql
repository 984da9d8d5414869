-- LongAttn selection: whether a selection is already in the selection table.
--   :selection     selection table
--   :selection_id  the selection
SELECT 1 AS present
FROM IDENTIFIER(:selection)
WHERE selection_id = :selection_id
LIMIT 1
