"""OpenAI-compatible serving: chat and text completions, model listing, on the in-process engine."""
