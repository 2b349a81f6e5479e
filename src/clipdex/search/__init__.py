"""Search: text and image queries, zero-shot classification, prompt templates."""
