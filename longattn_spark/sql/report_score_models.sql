-- Report: the model column of one scorer's rows (a handful).   :scores   :scorer_id
SELECT DISTINCT model FROM IDENTIFIER(:scores) WHERE scorer_id = :scorer_id LIMIT 10
