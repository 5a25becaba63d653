"""OpenAI-compatible serving: chat and text completions, model listing, on the replica's serving backend
(the in-process engine or an OpenAI-compatible upstream pool, see :mod:`service.serving`)."""
