"""From fold outputs to one submission: the folds' predictions (fold_outputs), the scored
candidates (candidates), the ensemble step (ensemble) and the submission file (submission)."""
