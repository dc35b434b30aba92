"""Clinical recognizers in the Presidio style: one PatternRecognizer subclass per file."""
