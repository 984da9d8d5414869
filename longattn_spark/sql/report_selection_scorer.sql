-- Report: the scorer of one selection.   :selection  selection table   :selection_id
SELECT max(scorer_id) AS scorer_id FROM IDENTIFIER(:selection) WHERE selection_id = :selection_id
