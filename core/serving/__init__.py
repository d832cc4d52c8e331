"""A finished run outside training: scoring new sentences (predict), the exported model
(export) and the exported TFLite model's plain-Python tokenizer (lite_tokenizer)."""
