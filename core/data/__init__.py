"""What the model reads: the review files (reviews), characters to token ids (tokenizer) and
batches of them (batches)."""
