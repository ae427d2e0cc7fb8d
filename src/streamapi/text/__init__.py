"""Text machinery of the simulator: the tokenizer and the answer writer."""
