"""Guest state: the model, the table, and its persistence."""
